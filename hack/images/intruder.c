/*
 * A pod that is not a member of any ActorCluster, trying what any pod on the network can
 * (image troupe-intruder:0.1.0, run by e2e/tests/security.rs). Each argument is one try:
 *
 *   http:METHOD:IP:PORT:PATH   sends one HTTP/1.1 request without credentials and prints
 *                              "http METHOD IP:PORT PATH -> <status line>"
 *   wire:IP:PORT:HEX           connects, sends the bytes HEX (a transport frame made by the
 *                              test with troupe_actors::wire::encode), waits up to 3 s and
 *                              prints "wire IP:PORT -> <n> bytes <hex>" or "-> closed" /
 *                              "-> reset" / "-> timeout" / "-> refused"
 *
 * Exits 0 once every try ran (the test judges the lines), 2 on bad usage. Static, musl.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

static int dial(const char *ip, const char *port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(port));
    if (inet_pton(AF_INET, ip, &sa.sin_addr) != 1) return -2;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return -1;
    struct timeval tv = {3, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

static int http(char *spec) {
    char *method = strtok(spec, ":"), *ip = strtok(NULL, ":"), *port = strtok(NULL, ":");
    char *path = strtok(NULL, "");
    if (!method || !ip || !port || !path) return 2;
    int fd = dial(ip, port);
    if (fd < 0) {
        printf("http %s %s:%s %s -> connect failed: %s\n", method, ip, port, path, strerror(errno));
        return 0;
    }
    char req[1024];
    int n = snprintf(req, sizeof req,
                     "%s %s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                     method, path, ip);
    if (write(fd, req, (size_t)n) != n) {
        printf("http %s %s:%s %s -> write failed\n", method, ip, port, path);
        close(fd);
        return 0;
    }
    char buf[512];
    ssize_t got = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (got <= 0) {
        printf("http %s %s:%s %s -> no answer\n", method, ip, port, path);
        return 0;
    }
    buf[got] = 0;
    char *eol = strstr(buf, "\r\n");
    if (eol) *eol = 0;
    printf("http %s %s:%s %s -> %s\n", method, ip, port, path, buf);
    return 0;
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

static int wire(char *spec) {
    char *ip = strtok(spec, ":"), *port = strtok(NULL, ":"), *hex = strtok(NULL, "");
    if (!ip || !port || !hex) return 2;
    size_t len = strlen(hex) / 2;
    unsigned char *frame = malloc(len ? len : 1);
    if (!frame) return 2;
    for (size_t i = 0; i < len; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) return 2;
        frame[i] = (unsigned char)(hi * 16 + lo);
    }
    int fd = dial(ip, port);
    if (fd < 0) {
        printf("wire %s:%s -> refused (%s)\n", ip, port, strerror(errno));
        free(frame);
        return 0;
    }
    ssize_t w = write(fd, frame, len);
    free(frame);
    if (w != (ssize_t)len) {
        printf("wire %s:%s -> write failed (%s)\n", ip, port, strerror(errno));
        close(fd);
        return 0;
    }
    unsigned char buf[256];
    ssize_t got = read(fd, buf, sizeof buf);
    if (got > 0) {
        printf("wire %s:%s -> %zd bytes ", ip, port, got);
        for (ssize_t i = 0; i < got && i < 64; i++) printf("%02x", buf[i]);
        printf("\n");
    } else if (got == 0) {
        printf("wire %s:%s -> closed\n", ip, port);
    } else if (errno == EAGAIN || errno == EWOULDBLOCK) {
        printf("wire %s:%s -> timeout\n", ip, port);
    } else {
        printf("wire %s:%s -> reset (%s)\n", ip, port, strerror(errno));
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: intruder http:METHOD:IP:PORT:PATH | wire:IP:PORT:HEX ...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        int rc;
        if (strncmp(argv[i], "http:", 5) == 0) {
            rc = http(argv[i] + 5);
        } else if (strncmp(argv[i], "wire:", 5) == 0) {
            rc = wire(argv[i] + 5);
        } else {
            rc = 2;
        }
        if (rc != 0) {
            fprintf(stderr, "bad argument: %s\n", argv[i]);
            return rc;
        }
        fflush(stdout);
    }
    return 0;
}
