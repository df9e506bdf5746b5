package image

import (
	"bufio"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"

	"github.com/nsbox/nsbox/machine/host"
	"golang.org/x/sys/unix"
)

// OpenArchive opens an archive a user named, following only root's
// symbolic links (see openFollowingRoot). O_NONBLOCK keeps a FIFO planted
// at the path from hanging the open (Go's poller reads it as a blocking
// stream); O_NOCTTY keeps a terminal from becoming nsbox's.
func OpenArchive(file string) (*os.File, error) {
	f, err := openFollowingRoot(file, unix.O_RDONLY|unix.O_NONBLOCK|unix.O_NOCTTY)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err == nil && fi.IsDir() {
		err = fmt.Errorf("%s is a directory, not an archive", file)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return f, nil
}

// FreeSpace is what an import may take of dir's file system (known to
// the user as the one of label): its free space and inodes less a reserve
// of 5% (at most 1 GiB, or 65536 inodes).
func FreeSpace(dir, label string) (Space, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Space{}, &os.PathError{Op: "statfs", Path: dir, Err: err}
	}
	bs := int64(st.Bsize)
	reserve := min(int64(st.Blocks)*bs/20, 1<<30)
	s := Space{Dir: label, Block: bs, Reserve: reserve, Bytes: max(int64(st.Bavail)*bs-reserve, 0)}
	if st.Files > 0 {
		s.Inodes = max(int64(st.Ffree)-min(int64(st.Files)/20, 65536), 1)
	}
	return s, nil
}

// NoCasefold makes sure the empty staging tree compares names byte for
// byte, as the checker does: in a case-folding directory "X" written
// through a link the archive named "x" would pass the check.
func NoCasefold(dir string) error {
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer f.Close()
	flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
	if err != nil || flags&FSCasefold == 0 {
		return nil // not ext4 or f2fs, or no folding
	}
	if err := unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags&^FSCasefold)); err != nil {
		return fmt.Errorf("%s folds the case of names and that cannot be turned off: %w", dir, err)
	}
	return nil
}

// archiveStream returns the tar stream in src: gzip is read in process,
// zstd and xz through their programs. stop ends the program if it still
// runs and waits for it.
func archiveStream(ctx context.Context, r host.Runner, src io.Reader) (stream io.Reader, stop func(), err error) {
	br := bufio.NewReaderSize(src, 64<<10)
	magic, _ := br.Peek(6)
	none := func() {}
	switch {
	case len(magic) >= 2 && magic[0] == 0x1f && magic[1] == 0x8b:
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, nil, readError(err)
		}
		return gz, none, nil
	case len(magic) >= 4 && string(magic[:4]) == "\x28\xb5\x2f\xfd":
		return through(ctx, r, "zstd", br)
	case len(magic) >= 6 && string(magic) == "\xfd7zXZ\x00":
		return through(ctx, r, "xz", br)
	}
	return br, none, nil
}

// through runs prog -dc on in and returns its output.
func through(ctx context.Context, r host.Runner, prog string, in io.Reader) (io.Reader, func(), error) {
	if _, err := exec.LookPath(prog); err != nil {
		pkg := map[string]string{"xz": "xz-utils"}[prog]
		if pkg == "" {
			pkg = prog
		}
		return nil, nil, fmt.Errorf("%s is not installed (install it: apt-get install %s)", prog, pkg)
	}
	ctx, cancel := context.WithCancel(ctx)
	// prog's stdin is a pipe we feed, for the reason GNU tar's is (see
	// extract): a feeder stuck on a stalled archive is ours to leave.
	inR, inW, err := os.Pipe()
	if err != nil {
		cancel()
		return nil, nil, err
	}
	go func() {
		_, _ = io.Copy(inW, in)
		inW.Close()
	}()
	pr, pw := io.Pipe()
	done := make(chan struct{})
	go func() {
		// An exit status other than 0 reaches the reader as the stream's
		// error: EOF means prog ended well.
		err := r.Run(ctx, &host.Cmd{Path: prog, Args: []string{"-dc"}, Stdin: inR, Stdout: pw})
		inR.Close()
		pw.CloseWithError(err)
		close(done)
	}()
	stop := func() {
		pr.CloseWithError(errTarStopped)
		cancel()
		<-done
	}
	return pr, stop, nil
}

// Extract feeds the archive in src through copyArchive into GNU tar,
// which extracts it into dir.
func Extract(ctx context.Context, r host.Runner, src io.Reader, dir string, c *ArchiveChecker) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	stream, stop, err := archiveStream(ctx, r, src)
	if err != nil {
		return err
	}
	defer stop()
	// GNU tar's stdin is a pipe of its own, not a reader that the runner
	// copies in a goroutine: that goroutine would keep Run from returning
	// while it waits for a stalled archive.
	pr, pw, err := os.Pipe()
	if err != nil {
		return err
	}
	// cut, for a reason of the archive's, comes before GNU tar sees the
	// end of its input: once tar has failed, refused says whether that was
	// the archive. done has the copy's last word.
	refused, done := make(chan error, 1), make(chan error, 1)
	cutOnce := sync.OnceFunc(func() { pw.Close() })
	cut := func(err error) {
		select {
		case refused <- err:
		default:
		}
		cutOnce()
	}
	go func() {
		err := copyArchive(stream, pw, c, cut)
		if err != nil {
			cut(err)
		}
		cutOnce()
		if err == nil {
			err = drainTail(stream)
		}
		done <- err
	}()
	tarArgs := TarArgs
	if c.XattrACLs {
		tarArgs = XattrACLTarArgs
	}
	args := append([]string{"--extract", "--file=-", "--directory=" + dir, "--same-permissions", "--same-owner"}, tarArgs...)
	tarErr := r.Run(ctx, &host.Cmd{Path: "tar", Args: args, Stdin: pr})
	// A write GNU tar will no longer read fails (EPIPE).
	pr.Close()
	if tarErr != nil {
		var err error
		select {
		case err = <-refused:
		default:
		}
		switch {
		case overSpace(err):
			// The copy reads on, to say what the archive needs.
		case err != nil && !tarStopped(err):
			return err
		default:
			// GNU tar failed on its own (or was stopped): the copy may
			// wait on a stalled archive, and has nothing to add.
			return tarErr
		}
	}
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// FSCasefold is FS_CASEFOLD_FL: a directory whose names match without
// regard to case (ext4, f2fs), inherited by new directories.
const FSCasefold = 0x40000000
