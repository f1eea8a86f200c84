/*
 * Tests only: make Janus offer 127.0.0.1 as an ICE candidate.
 *
 * Janus (janus_ice_setup_local in ice.c) skips every interface flagged
 * IFF_LOOPBACK, so on a machine where the tests may use nothing but 127.0.0.1
 * it would offer no usable candidate. Loaded with LD_PRELOAD into the Janus the
 * tests start (tests/integration/janus_helpers.py builds it with gcc), this
 * wraps getifaddrs() and clears IFF_LOOPBACK on "lo". A real deployment has a
 * real interface and needs none of this (docs/calls.md).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <string.h>

int getifaddrs(struct ifaddrs **ifap) {
    int (*real)(struct ifaddrs **) = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    if (real == NULL)
        return -1;
    int rc = real(ifap);
    if (rc == 0) {
        for (struct ifaddrs *i = *ifap; i != NULL; i = i->ifa_next) {
            if (i->ifa_name != NULL && strcmp(i->ifa_name, "lo") == 0)
                i->ifa_flags &= ~(unsigned int)IFF_LOOPBACK;
        }
    }
    return rc;
}
