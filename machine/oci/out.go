package oci

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"os"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
	"github.com/klauspost/compress/gzip"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// FileLayer is an image layer whose blob (a gzip-compressed tar) is a
// file, its digests known: nothing reads it again to count them.
type FileLayer struct {
	file           *os.File
	digest, diffID v1.Hash
	size           int64
}

var _ v1.Layer = (*FileLayer)(nil)

// WriteLayerFile compresses into f, from its start, the uncompressed
// layer write writes, counting both digests on the way.
func WriteLayerFile(f *os.File, write func(io.Writer) error) (*FileLayer, error) {
	zh, th := sha256.New(), sha256.New()
	cw := &countWriter{w: io.MultiWriter(f, zh)}
	// One level for all: the same tree gives the same blob.
	gz, err := gzip.NewWriterLevel(cw, gzip.DefaultCompression)
	if err != nil {
		return nil, err
	}
	if err := write(io.MultiWriter(gz, th)); err != nil {
		return nil, err
	}
	if err := gz.Close(); err != nil {
		return nil, err
	}
	return &FileLayer{file: f, digest: sum(zh), diffID: sum(th), size: cw.n}, nil
}

// OpenLayerFile is the layer whose blob is f, with the digests and size
// recorded when it was written (a cached one).
func OpenLayerFile(f *os.File, digest, diffID string, size int64) (*FileLayer, error) {
	d, err := v1.NewHash(digest)
	if err != nil {
		return nil, err
	}
	t, err := v1.NewHash(diffID)
	if err != nil {
		return nil, err
	}
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if fi.Size() != size {
		return nil, fmt.Errorf("%w: %s has %d bytes, not %d", ErrDigest, f.Name(), fi.Size(), size)
	}
	return &FileLayer{file: f, digest: d, diffID: t, size: size}, nil
}

func sum(h hash.Hash) v1.Hash {
	return v1.Hash{Algorithm: "sha256", Hex: hex.EncodeToString(h.Sum(nil))}
}

type countWriter struct {
	w io.Writer
	n int64
}

func (c *countWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// File is the layer's blob.
func (l *FileLayer) File() *os.File { return l.file }

func (l *FileLayer) Digest() (v1.Hash, error)            { return l.digest, nil }
func (l *FileLayer) DiffID() (v1.Hash, error)            { return l.diffID, nil }
func (l *FileLayer) Size() (int64, error)                { return l.size, nil }
func (l *FileLayer) MediaType() (types.MediaType, error) { return types.OCILayer, nil }

// Compressed reads the blob; several readers may read it at once.
func (l *FileLayer) Compressed() (io.ReadCloser, error) {
	return io.NopCloser(io.NewSectionReader(l.file, 0, l.size)), nil
}

// Uncompressed reads the layer's tar.
func (l *FileLayer) Uncompressed() (io.ReadCloser, error) {
	return gzip.NewReader(io.NewSectionReader(l.file, 0, l.size))
}

// Built is one layer of an image nsbox makes, and what says where it
// comes from (the image's history).
type Built struct {
	Layer   v1.Layer
	Comment string
}

// NewImage is an OCI image of layers with the configuration cfg, for
// platform, made at created.
func NewImage(layers []Built, cfg v1.Config, platform v1.Platform, created time.Time) (v1.Image, error) {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	var adds []mutate.Addendum
	for _, l := range layers {
		adds = append(adds, mutate.Addendum{Layer: l.Layer, MediaType: types.OCILayer,
			History: v1.History{Created: v1.Time{Time: created}, CreatedBy: "nsbox", Comment: l.Comment}})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return nil, err
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture, cf.Variant = platform.OS, platform.Architecture, platform.Variant
	cf.Created = v1.Time{Time: created}
	cf.Config = cfg
	return mutate.ConfigFile(img, cf)
}

// RefName is the annotation that tags an image in an OCI image layout.
const RefName = "org.opencontainers.image.ref.name"

// WriteLayout writes img, tagged tag, as the one image of a new OCI image
// layout in dir (an empty directory of the caller's): oci-layout,
// index.json and blobs/sha256. A blob already there with the right size
// is kept (the caller put it there).
func WriteLayout(dir string, img v1.Image, tag string) error {
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return err
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{RefName: tag}))
}

// Push sends img to the registry as dst (a Registry source), with the
// credentials and transport a pull uses; progress, when set, hears the
// bytes sent of all there is to send.
func Push(ctx context.Context, dst Source, img v1.Image, o Options, progress func(done, total int64)) error {
	if dst.Kind != Registry {
		return fmt.Errorf("%q: push sends to a registry, as docker://[REGISTRY/]REPO[:TAG]", dst.Text)
	}
	if o.Stall <= 0 {
		o.Stall = time.Minute
	}
	opts := remoteOptions(ctx, o)
	var done chan struct{}
	if progress != nil {
		ch := make(chan v1.Update, 64)
		done = make(chan struct{})
		go func() {
			defer close(done)
			for u := range ch {
				if u.Error == nil {
					progress(u.Complete, u.Total)
				}
			}
		}()
		opts = append(opts, remote.WithProgress(ch))
	}
	err := remote.Write(dst.Ref, img, opts...)
	if done != nil {
		<-done
	}
	if err != nil {
		return describeAs("", dst, o, err)
	}
	return nil
}

// CheckPush asks the registry of dst whether it takes a push there with
// the credentials a push uses (it starts an upload and cancels it): a
// registry that refuses them or does not answer is found before a layer
// is written.
func CheckPush(dst Source, o Options) error {
	if dst.Kind != Registry {
		return fmt.Errorf("%q: push sends to a registry, as docker://[REGISTRY/]REPO[:TAG]", dst.Text)
	}
	if o.Stall <= 0 {
		o.Stall = time.Minute
	}
	kc, tr := o.client()
	if err := remote.CheckPushPermission(dst.Ref, kc, tr); err != nil {
		return describeAs("", dst, o, err)
	}
	return nil
}
