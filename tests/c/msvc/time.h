/* stand-in (see README) */
#pragma once
typedef long long time_t;
