/* fuse_ceiling: the FUSE overhead anchor for `make bench`. It presents one file,
 * disk.img, whose reads, writes and fsyncs go straight to a local backing file with
 * pread, pwrite and fdatasync: no replication, no hashing, no network. Whatever FUSE
 * itself costs on this machine, this pays too, so no FUSE-presented disk can beat it.
 *
 * usage: fuse_ceiling BACKING_FILE MOUNTPOINT [fuse options, e.g. -f]
 * Built by bench/bench.py: gcc -O2 fuse_ceiling.c $(pkg-config --cflags --libs fuse3) */
#define FUSE_USE_VERSION 31
#include <errno.h>
#include <fcntl.h>
#include <fuse.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char kDiskPath[] = "/disk.img";
static int backing_fd = -1;
static off_t backing_size;

static int ceiling_getattr(const char *path, struct stat *st, struct fuse_file_info *fi) {
  (void)fi;
  memset(st, 0, sizeof *st);
  if (strcmp(path, "/") == 0) {
    st->st_mode = S_IFDIR | 0755;
    st->st_nlink = 2;
    return 0;
  }
  if (strcmp(path, kDiskPath) == 0) {
    st->st_mode = S_IFREG | 0644;
    st->st_nlink = 1;
    st->st_size = backing_size;
    st->st_blksize = 4096;
    st->st_blocks = backing_size / 512;
    return 0;
  }
  return -ENOENT;
}

static int ceiling_readdir(const char *path, void *buf, fuse_fill_dir_t fill, off_t offset,
                           struct fuse_file_info *fi, enum fuse_readdir_flags flags) {
  (void)offset, (void)fi, (void)flags;
  if (strcmp(path, "/") != 0) return -ENOENT;
  fill(buf, ".", NULL, 0, 0);
  fill(buf, "..", NULL, 0, 0);
  fill(buf, kDiskPath + 1, NULL, 0, 0);
  return 0;
}

static int ceiling_open(const char *path, struct fuse_file_info *fi) {
  (void)fi;
  return strcmp(path, kDiskPath) == 0 ? 0 : -ENOENT;
}

static int ceiling_read(const char *path, char *buf, size_t size, off_t offset,
                        struct fuse_file_info *fi) {
  (void)path, (void)fi;
  ssize_t n = pread(backing_fd, buf, size, offset);
  return n < 0 ? -errno : (int)n;
}

static int ceiling_write(const char *path, const char *buf, size_t size, off_t offset,
                         struct fuse_file_info *fi) {
  (void)path, (void)fi;
  if (offset >= backing_size) return -ENOSPC;
  if (offset + (off_t)size > backing_size) size = (size_t)(backing_size - offset);
  ssize_t n = pwrite(backing_fd, buf, size, offset);
  return n < 0 ? -errno : (int)n;
}

static int ceiling_fsync(const char *path, int datasync, struct fuse_file_info *fi) {
  (void)path, (void)datasync, (void)fi;
  return fdatasync(backing_fd) == 0 ? 0 : -errno;
}

/* Opening with O_TRUNC (a shell redirection) must not change the size. */
static int ceiling_truncate(const char *path, off_t size, struct fuse_file_info *fi) {
  (void)path, (void)fi;
  return size == backing_size ? 0 : -EPERM;
}

static const struct fuse_operations kOps = {
    .getattr = ceiling_getattr,
    .truncate = ceiling_truncate,
    .open = ceiling_open,
    .read = ceiling_read,
    .write = ceiling_write,
    .fsync = ceiling_fsync,
    .readdir = ceiling_readdir,
};

int main(int argc, char **argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: %s BACKING_FILE MOUNTPOINT [fuse options]\n", argv[0]);
    return 2;
  }
  backing_fd = open(argv[1], O_RDWR);
  struct stat st;
  if (backing_fd < 0 || fstat(backing_fd, &st) != 0) {
    perror(argv[1]);
    return 1;
  }
  backing_size = st.st_size;
  argv[1] = argv[0]; /* fuse_main sees: program MOUNTPOINT [options] */
  return fuse_main(argc - 1, argv + 1, &kOps, NULL);
}
