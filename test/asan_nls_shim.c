/*
 * asan_nls_shim.c
 *		Preloaded beside the AddressSanitizer runtime by test/asan only.
 *
 * With libasan preloaded into Debian's postgres binary, glibc's gettext lock
 * is found corrupted and bindtextdomain(), called first thing in main(),
 * waits on it forever.  The test server needs no translated messages, so
 * binding a text domain becomes a no-op.
 */
char	   *bindtextdomain(const char *domainname, const char *dirname);
char	   *bind_textdomain_codeset(const char *domainname, const char *codeset);

char *
bindtextdomain(const char *domainname, const char *dirname)
{
	(void) domainname;
	return (char *) dirname;
}

char *
bind_textdomain_codeset(const char *domainname, const char *codeset)
{
	(void) domainname;
	return (char *) codeset;
}
