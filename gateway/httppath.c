/* httppath.c — see httppath.h. */
#include "httppath.h"

#include <string.h>

enum httppath_ep httppath_route(const char *uri)
{
    if (!uri)
        return HTTPPATH_NOT_FOUND;
    if (!strcmp(uri, "/health"))
        return HTTPPATH_HEALTH;
    if (!strcmp(uri, "/ready"))
        return HTTPPATH_READY;
    if (!strcmp(uri, "/metrics"))
        return HTTPPATH_METRICS;
    return HTTPPATH_NOT_FOUND;
}
