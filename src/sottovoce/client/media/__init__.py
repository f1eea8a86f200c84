"""Voice notes on this device: transcoding, recording and playing them with PyAV.

Next to client/calls, the only place that imports the media stack: voice notes need
FFmpeg's decoders, libopus and the platform's audio devices, and nothing else in the
client should pay for loading them.
"""
