/* pressure_level.c — see pressure_level.h. */
#include "common/pressure_level.h"

const char *pressure_level_name(int level)
{
    static const char *const names[] = {"normal", "warning", "critical", "emergency"};
    _Static_assert(sizeof names / sizeof names[0] == PRESSURE_LEVELS, "a name per level");
    return level >= 0 && level < PRESSURE_LEVELS ? names[level] : "?";
}

enum pressure_level pressure_level_clamp(int level)
{
    if (level <= PRESSURE_NORMAL)
        return PRESSURE_NORMAL;
    if (level >= PRESSURE_EMERGENCY)
        return PRESSURE_EMERGENCY;
    return (enum pressure_level)level;
}
