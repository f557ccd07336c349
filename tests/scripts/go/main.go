// Go net/http, server and client, for tracer's end-to-end tests.
// usage: gohttp serve PORT | gohttp get PORT N (prints the statuses)
//
//	gohttp serves PORT CERT KEY | gohttp gets PORT N [PAUSE_MS]: the same over TLS (crypto/tls),
//	HTTP/1.1 only (HTTP/2 is not offered), the certificate not checked by the client, which
//	waits PAUSE_MS before its first request.
package main

import (
	"crypto/tls"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"
)

func hello(w http.ResponseWriter, r *http.Request) {
	fmt.Fprint(w, "hello from go\n")
}

func main() {
	port := os.Args[2]
	switch os.Args[1] {
	case "serve":
		http.HandleFunc("/", hello)
		if err := http.ListenAndServe("127.0.0.1:"+port, nil); err != nil {
			panic(err)
		}
	case "serves":
		http.HandleFunc("/", hello)
		srv := &http.Server{
			Addr:         "127.0.0.1:" + port,
			TLSNextProto: map[string]func(*http.Server, *tls.Conn, http.Handler){},
		}
		if err := srv.ListenAndServeTLS(os.Args[3], os.Args[4]); err != nil {
			panic(err)
		}
	case "get", "gets":
		n, _ := strconv.Atoi(os.Args[3])
		scheme := "http"
		client := http.DefaultClient
		if os.Args[1] == "gets" {
			scheme = "https"
			client = &http.Client{Transport: &http.Transport{
				TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
				TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{},
			}}
		}
		if len(os.Args) > 4 {
			ms, _ := strconv.Atoi(os.Args[4])
			time.Sleep(time.Duration(ms) * time.Millisecond)
		}
		var statuses []string
		for i := 0; i < n; i++ {
			resp, err := client.Get(fmt.Sprintf("%s://127.0.0.1:%s/go/%d", scheme, port, i))
			if err != nil {
				panic(err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			statuses = append(statuses, strconv.Itoa(resp.StatusCode))
		}
		fmt.Println(strings.Join(statuses, " "))
	}
}
