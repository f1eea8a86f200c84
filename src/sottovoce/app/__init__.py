"""`sottovoce app`: the browser UI, served on 127.0.0.1 by one account's SDK (docs/app.md).

``gate`` decides who may talk to the app (the launch token, the session cookie, the
Host and Origin allow-lists) and which headers every response carries; ``web`` serves
the page and the WebSocket over the websockets library; ``bridge`` turns the page's
requests into SDK calls and the SDK's events into notices; ``views`` is what the page
is sent. The page itself is plain ES modules under ``static/``.
"""
