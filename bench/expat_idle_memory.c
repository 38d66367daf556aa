/* What one libexpat parser (what fxml_stream wraps, one per ejabberd session in raw mode) holds
 * between stanzas: malloc'd bytes after a stream header and one message. Run by
 * bench/parser_idle_memory, next to the node's own parser's figure. */
#include <expat.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <malloc.h>
static long live = 0, peak = 0;
static void *m(size_t n) { void *p = malloc(n); if (p) { live += malloc_usable_size(p); if (live > peak) peak = live; } return p; }
static void *r(void *p, size_t n) { if (p) live -= malloc_usable_size(p); void *q = realloc(p, n); if (q) { live += malloc_usable_size(q); if (live > peak) peak = live; } return q; }
static void f(void *p) { if (p) live -= malloc_usable_size(p); free(p); }
int main(void) {
    XML_Memory_Handling_Suite ms = { m, r, f };
    const char *header = "<?xml version='1.0'?><stream:stream to='localhost' xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams' version='1.0' xml:lang='en'>";
    const char *msg = "<message to='bob@localhost' type='chat' id='a1'><body>hello there, how are you?</body></message>";
    XML_Parser p = XML_ParserCreate_MM("UTF-8", &ms, "\n");
    XML_SetReturnNSTriplet(p, 1);
    printf("expat %s: parser created: %ld bytes live\n", XML_ExpatVersion(), live);
    XML_Parse(p, header, strlen(header), 0);
    printf("after a stream header: %ld bytes live\n", live);
    XML_Parse(p, msg, strlen(msg), 0);
    printf("after one message (idle between stanzas): %ld bytes live (peak %ld)\n", live, peak);
    XML_ParserFree(p);
    return 0;
}
