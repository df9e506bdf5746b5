package remote

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func framed(t *testing.T, data []byte) []byte {
	t.Helper()
	var b bytes.Buffer
	fw := NewFrameWriter(&b)
	if _, err := fw.Write(data); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func TestFramesRoundTrip(t *testing.T) {
	data := make([]byte, 3*MaxFrame+17)
	rand.Read(data)
	s := framed(t, data)
	fr := NewFrameReader(bytes.NewReader(s))
	got, err := io.ReadAll(fr)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) || !fr.Done() || fr.Bytes() != int64(len(data)) {
		t.Fatalf("round trip: %d bytes, done %v", len(got), fr.Done())
	}
	fw := NewFrameWriter(io.Discard)
	fw.Write(data)
	if fr.Sum() != fw.Sum() {
		t.Fatalf("sum %s, want %s", fr.Sum(), fw.Sum())
	}
}

func TestFramesRefused(t *testing.T) {
	data := []byte("a tree of a machine")
	good := framed(t, data)
	wrongSum := append([]byte{}, good...)
	wrongSum[len(wrongSum)-1] ^= 1
	flipped := append([]byte{}, good...)
	flipped[5] ^= 1 // a data byte
	huge := []byte{0x7f, 0xff, 0xff, 0xff, 'x'}
	for _, tc := range []struct {
		what   string
		stream []byte
		want   error
	}{
		{"empty", nil, io.ErrUnexpectedEOF},
		{"cut in a frame", good[:10], io.ErrUnexpectedEOF},
		{"no end frame", good[:4+len(data)], io.ErrUnexpectedEOF},
		{"cut in the sum", good[:len(good)-3], io.ErrUnexpectedEOF},
		{"wrong sum", wrongSum, ErrChecksum},
		{"a data byte changed", flipped, ErrChecksum},
		{"a frame too large", huge, ErrStream},
	} {
		fr := NewFrameReader(bytes.NewReader(tc.stream))
		_, err := io.ReadAll(fr)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", tc.what, err, tc.want)
		}
		if fr.Done() || fr.Err() == nil {
			t.Errorf("%s: taken for a whole stream", tc.what)
		}
	}
}
