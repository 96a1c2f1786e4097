/*
 * weaken-verneed: mark one symbol-version requirement of an ELF64 shared library as weak
 * (VER_FLG_WEAK in .gnu.version_r), so the dynamic loader accepts a libstdc++ that lacks it.
 *
 * Usage: weaken-verneed FILE VERSION     e.g. weaken-verneed libLibTorchSharp.so GLIBCXX_3.4.32
 * Exit:  0 patched now, 3 already weak (nothing written), 4 FILE does not need VERSION, 1 error.
 * Only the 2-byte vna_flags field is written, in place. See docs/torchsharp-on-debian.md.
 */
#include <elf.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned char *read_all(const char *path, long *size) {
    FILE *f = fopen(path, "rb");
    if (!f) { perror(path); return NULL; }
    fseek(f, 0, SEEK_END); *size = ftell(f); fseek(f, 0, SEEK_SET);
    unsigned char *buf = malloc((size_t)*size);
    if (!buf || fread(buf, 1, (size_t)*size, f) != (size_t)*size) { fprintf(stderr, "%s: read failed\n", path); fclose(f); free(buf); return NULL; }
    fclose(f);
    return buf;
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: %s FILE VERSION\n", argv[0]); return 1; }
    long size = 0;
    unsigned char *buf = read_all(argv[1], &size);
    if (!buf) return 1;
    if (size < (long)sizeof(Elf64_Ehdr) || memcmp(buf, ELFMAG, SELFMAG) != 0 || buf[EI_CLASS] != ELFCLASS64 || buf[EI_DATA] != ELFDATA2LSB) {
        fprintf(stderr, "%s: not a little-endian ELF64 file\n", argv[1]); return 1;
    }
    Elf64_Ehdr *eh = (Elf64_Ehdr *)buf;
    if (eh->e_shoff == 0 || eh->e_shoff + (Elf64_Off)eh->e_shnum * sizeof(Elf64_Shdr) > (Elf64_Off)size) {
        fprintf(stderr, "%s: bad section header table\n", argv[1]); return 1;
    }
    Elf64_Shdr *sh = (Elf64_Shdr *)(buf + eh->e_shoff);
    for (int i = 0; i < eh->e_shnum; i++) {
        if (sh[i].sh_type != SHT_GNU_verneed) continue;
        if (sh[i].sh_link >= eh->e_shnum) break;
        Elf64_Shdr *strtab = &sh[sh[i].sh_link];
        const char *strs = (const char *)(buf + strtab->sh_offset);
        Elf64_Off off = sh[i].sh_offset;
        for (Elf64_Word n = 0; n < sh[i].sh_info && off + sizeof(Elf64_Verneed) <= (Elf64_Off)size; n++) {
            Elf64_Verneed *vn = (Elf64_Verneed *)(buf + off);
            Elf64_Off aoff = off + vn->vn_aux;
            for (int a = 0; a < vn->vn_cnt && aoff + sizeof(Elf64_Vernaux) <= (Elf64_Off)size; a++) {
                Elf64_Vernaux *va = (Elf64_Vernaux *)(buf + aoff);
                if (va->vna_name < strtab->sh_size && strcmp(strs + va->vna_name, argv[2]) == 0) {
                    if (va->vna_flags & VER_FLG_WEAK) { free(buf); return 3; }
                    long field = (long)(aoff + offsetof(Elf64_Vernaux, vna_flags));
                    Elf64_Half flags = (Elf64_Half)(va->vna_flags | VER_FLG_WEAK);
                    FILE *f = fopen(argv[1], "r+b");
                    if (!f || fseek(f, field, SEEK_SET) != 0 || fwrite(&flags, sizeof flags, 1, f) != 1) {
                        fprintf(stderr, "%s: write failed\n", argv[1]); if (f) fclose(f); free(buf); return 1;
                    }
                    fclose(f); free(buf);
                    return 0;
                }
                if (va->vna_next == 0) break;
                aoff += va->vna_next;
            }
            if (vn->vn_next == 0) break;
            off += vn->vn_next;
        }
    }
    free(buf);
    return 4;
}
