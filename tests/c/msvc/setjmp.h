/* stand-in (see README): clang's <intrin.h> includes it */
#pragma once
typedef struct { unsigned long long part[2]; } _JBTYPE_STANDIN;
typedef _JBTYPE_STANDIN jmp_buf[16];
