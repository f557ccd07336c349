// Go net/http, server and client, for tracer's end-to-end tests.
// usage: gohttp serve PORT | gohttp get PORT N (prints the statuses)
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"strings"
)

func main() {
	port := os.Args[2]
	switch os.Args[1] {
	case "serve":
		http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
			fmt.Fprint(w, "hello from go\n")
		})
		if err := http.ListenAndServe("127.0.0.1:"+port, nil); err != nil {
			panic(err)
		}
	case "get":
		n, _ := strconv.Atoi(os.Args[3])
		var statuses []string
		for i := 0; i < n; i++ {
			resp, err := http.Get(fmt.Sprintf("http://127.0.0.1:%s/go/%d", port, i))
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
