package download

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"time"
)

// Errors of a fetch, for errors.Is.
var (
	// ErrNotFound is a 404 or 410: the server has no such file.
	ErrNotFound = errors.New("not found")
	// ErrTooLarge is a file over the cap its caller gave.
	ErrTooLarge = errors.New("too large")
	// ErrRedirect is a redirect nsbox does not follow.
	ErrRedirect = errors.New("redirect refused")
)

// maxRedirects is how many redirects a fetch follows, as curl's default
// of 50 is more than any mirror needs.
const maxRedirects = 10

// Client is an HTTP client over Transport(stall, plainHTTP) whose
// redirects stay http or https (never file: or another scheme), carry no
// credentials, and never lead from another host to this machine's
// loopback (a server out there must not make nsbox read a service
// listening here). Each redirect passes the transport's plain HTTP rule
// again.
func Client(stall time.Duration, plainHTTP bool) *http.Client {
	return &http.Client{Transport: Transport(stall, plainHTTP), CheckRedirect: checkRedirect}
}

func checkRedirect(req *http.Request, via []*http.Request) error {
	u := req.URL
	switch {
	case len(via) >= maxRedirects:
		return fmt.Errorf("%w: more than %d redirects", ErrRedirect, maxRedirects)
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("%w: redirected to %s, which is not http or https", ErrRedirect, u.Redacted())
	case u.User != nil:
		return fmt.Errorf("%w: redirected to %s, which carries credentials", ErrRedirect, u.Redacted())
	case Loopback(u.Hostname()) && !Loopback(via[0].URL.Hostname()):
		return fmt.Errorf("%w: %s redirected to %s, on this machine's loopback", ErrRedirect, via[0].URL.Host, u.Host)
	}
	return nil
}

// open GETs u and returns its response when the status is 200.
func open(ctx context.Context, c *http.Client, u *url.URL) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u.String(), nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("User-Agent", "nsbox")
	resp, err := c.Do(req)
	if err != nil {
		var ue *url.Error
		if errors.As(err, &ue) {
			err = ue.Err // its text repeats the URL the caller names
		}
		return nil, err
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return resp, nil
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusGone:
		resp.Body.Close()
		return nil, fmt.Errorf("%w (HTTP %s)", ErrNotFound, resp.Status)
	}
	resp.Body.Close()
	return nil, fmt.Errorf("the server answered HTTP %s", resp.Status)
}

// Small reads u whole: at most max bytes.
func Small(ctx context.Context, c *http.Client, u *url.URL, max int64) ([]byte, error) {
	resp, err := open(ctx, c, u)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.ContentLength > max {
		return nil, fmt.Errorf("%w: %d bytes, more than the %d it may be", ErrTooLarge, resp.ContentLength, max)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, max+1))
	if err != nil {
		return nil, err
	}
	if int64(len(b)) > max {
		return nil, fmt.Errorf("%w: more than the %d bytes it may be", ErrTooLarge, max)
	}
	return b, nil
}

// Fetch is a download to a file.
type Fetch struct {
	Client *http.Client
	// Max is the most the file may be; a larger Content-Length is refused
	// before a byte is read, and a body that goes past it is cut.
	Max int64
	// Check, when set, hears the announced length (-1: none) before
	// anything is read, and may refuse it (the free space).
	Check func(length int64) error
	// Progress, when set, hears of the bytes come so far and the
	// announced length, five times a second at most.
	Progress func(done, length int64)
}

// Result is what a fetch wrote.
type Result struct {
	Bytes  int64
	SHA256 string // lower-case hex
	Time   time.Duration
}

// To writes u's body to w, taking its sha256 as it comes. A body longer
// than its Content-Length is cut there by Go's HTTP client; a shorter one
// fails (unexpected EOF).
func (f *Fetch) To(ctx context.Context, u *url.URL, w io.Writer) (Result, error) {
	start := time.Now()
	resp, err := open(ctx, f.Client, u)
	if err != nil {
		return Result{}, err
	}
	defer resp.Body.Close()
	length := resp.ContentLength
	if length > f.Max {
		return Result{}, fmt.Errorf("%w: the server announces %d bytes, more than the %d allowed", ErrTooLarge, length, f.Max)
	}
	if f.Check != nil {
		if err := f.Check(length); err != nil {
			return Result{}, err
		}
	}
	h := sha256.New()
	var n int64
	buf := make([]byte, 256<<10)
	last := time.Now()
	for {
		k, rerr := resp.Body.Read(buf)
		if k > 0 {
			if n+int64(k) > f.Max {
				return Result{}, fmt.Errorf("%w: the server sends more than the %d bytes allowed", ErrTooLarge, f.Max)
			}
			h.Write(buf[:k])
			if _, err := w.Write(buf[:k]); err != nil {
				return Result{}, err
			}
			n += int64(k)
			if f.Progress != nil && time.Since(last) >= 200*time.Millisecond {
				last = time.Now()
				f.Progress(n, length)
			}
		}
		if rerr == io.EOF {
			break
		}
		if rerr != nil {
			if ctx.Err() != nil {
				return Result{}, ctx.Err()
			}
			return Result{}, rerr
		}
	}
	if length >= 0 && n != length {
		return Result{}, fmt.Errorf("the server sent %d bytes, having announced %d", n, length)
	}
	if f.Progress != nil {
		f.Progress(n, length)
	}
	return Result{Bytes: n, SHA256: hex.EncodeToString(h.Sum(nil)), Time: time.Since(start)}, nil
}
