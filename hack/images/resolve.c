/*
 * The local cluster's DNS check, run as a pod (image troupe-resolve:0.1.0): resolves each
 * argument NAME=EXPECT with the pod's own /etc/resolv.conf, the way an application in the
 * pod would (musl's stub resolver, getaddrinfo, IPv4), and prints one line per name:
 *
 *   resolve NAME EXPECT: ok|FAIL <addresses or resolver error>
 *
 * EXPECT is an IPv4 address that must be among the answers, "any" (at least one answer)
 * or "none" (the name must not resolve). Prints /etc/resolv.conf first. Exits 0 when every
 * name resolved as expected, 1 otherwise, 2 on bad usage. Built statically with musl.
 */
#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>

static void print_resolv_conf(void) {
    char line[512];
    FILE *f = fopen("/etc/resolv.conf", "r");
    if (!f) {
        printf("resolv.conf: (none)\n");
        return;
    }
    while (fgets(line, sizeof line, f)) printf("resolv.conf: %s", line);
    fclose(f);
}

static int check(const char *arg) {
    char name[256], answers[1024] = "";
    const char *eq = strrchr(arg, '=');
    if (!eq || eq == arg || (size_t)(eq - arg) >= sizeof name) {
        printf("resolve %s: FAIL bad argument (want NAME=ADDRESS|any|none)\n", arg);
        return 0;
    }
    memcpy(name, arg, (size_t)(eq - arg));
    name[eq - arg] = '\0';
    const char *expect = eq + 1;

    struct addrinfo hints = {.ai_family = AF_INET, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(name, NULL, &hints, &res);
    if (rc != 0) {
        int ok = strcmp(expect, "none") == 0;
        printf("resolve %s %s: %s %s\n", name, expect, ok ? "ok" : "FAIL", gai_strerror(rc));
        return ok;
    }
    int found = 0;
    for (struct addrinfo *p = res; p; p = p->ai_next) {
        char ip[INET_ADDRSTRLEN];
        const struct sockaddr_in *sin = (const struct sockaddr_in *)p->ai_addr;
        if (!inet_ntop(AF_INET, &sin->sin_addr, ip, sizeof ip)) continue;
        if (strcmp(ip, expect) == 0) found = 1;
        if (strlen(answers) + strlen(ip) + 2 < sizeof answers) {
            strcat(answers, " ");
            strcat(answers, ip);
        }
    }
    freeaddrinfo(res);
    int ok = strcmp(expect, "any") == 0 ? 1 : strcmp(expect, "none") == 0 ? 0 : found;
    printf("resolve %s %s: %s%s\n", name, expect, ok ? "ok" : "FAIL", answers);
    return ok;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: resolve NAME=ADDRESS|any|none...\n");
        return 2;
    }
    print_resolv_conf();
    int all = 1;
    for (int i = 1; i < argc; i++) all &= check(argv[i]);
    fflush(stdout);
    return all ? 0 : 1;
}
