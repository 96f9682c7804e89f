/* stand-in (see README) */
#pragma once
#include <stdarg.h>
#include <stddef.h>
typedef struct _iobuf FILE;
FILE *__acrt_iob_func(unsigned index);
#define stdout (__acrt_iob_func(1))
#define stderr (__acrt_iob_func(2))
int fprintf(FILE *f, const char *fmt, ...);
int printf(const char *fmt, ...);
int snprintf(char *buf, size_t n, const char *fmt, ...);
int vsnprintf(char *buf, size_t n, const char *fmt, va_list ap);
int fflush(FILE *f);
int fputs(const char *s, FILE *f);
