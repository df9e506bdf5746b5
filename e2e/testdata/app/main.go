// Command app is the program of the suite's application image: a static
// binary with no init beside it, as most container images are. "serve"
// answers each TCP connection with who and where it runs, and ends on
// SIGTERM saying so; "probe" prints the same once.
package main

import (
	"fmt"
	"net"
	"os"
	"os/signal"
	"syscall"
)

func whoami() string {
	wd, _ := os.Getwd()
	return fmt.Sprintf("pid=%d uid=%d gid=%d cwd=%s greeting=%q args=%q", os.Getpid(), os.Getuid(), os.Getgid(), wd, os.Getenv("GREETING"), os.Args[1:])
}

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: app serve PORT | probe")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "probe":
		fmt.Println(whoami())
	case "serve":
		port := "8080"
		if len(os.Args) > 2 {
			port = os.Args[2]
		}
		l, err := net.Listen("tcp", ":"+port)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		fmt.Println("app started:", whoami())
		go func() {
			c := make(chan os.Signal, 1)
			signal.Notify(c, syscall.SIGTERM)
			<-c
			fmt.Println("app got SIGTERM")
			os.Exit(0)
		}()
		for {
			conn, err := l.Accept()
			if err != nil {
				continue
			}
			fmt.Fprintln(conn, "hello from app:", whoami())
			conn.Close()
		}
	default:
		fmt.Fprintln(os.Stderr, "unknown command", os.Args[1])
		os.Exit(2)
	}
}
