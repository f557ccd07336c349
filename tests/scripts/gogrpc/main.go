// Go gRPC (google.golang.org/grpc, Debian's golang-google-grpc-dev), server and client of the
// service demo.Echo on raw bytes, as tests/scripts/grpc_server.py: Say (unary), Fail
// (UNAVAILABLE, "down"), Count (server streaming: as many messages as the request's first
// byte), Sum (client streaming: the number of messages), Chat (bidirectional: each message
// echoed). Over h2c.
// It also serves plain HTTP that switches to HTTP/2 by `Upgrade: h2c` (golang.org/x/net's
// h2c handler): every path answers "hello h2c", /missing a 404.
// usage: gogrpc serve PORT | gogrpc call PORT CALL... (prints each call's status code name)
//
//	| gogrpc h2c PORT
//	CALL: say | fail | count | sum | chat
package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/h2c"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// raw passes messages as the bytes they are: no generated code.
type raw struct{}

func (raw) Marshal(v interface{}) ([]byte, error) { return *(v.(*[]byte)), nil }
func (raw) Unmarshal(data []byte, v interface{}) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (raw) Name() string   { return "proto" }
func (raw) String() string { return "proto" }

// handler is grpc.MethodDesc's handler type (unnamed in this version of grpc).
type handler = func(interface{}, context.Context, func(interface{}) error, grpc.UnaryServerInterceptor) (interface{}, error)

func unary(reply func([]byte) ([]byte, error)) handler {
	return func(_ interface{}, _ context.Context, dec func(interface{}) error, _ grpc.UnaryServerInterceptor) (interface{}, error) {
		var in []byte
		if err := dec(&in); err != nil {
			return nil, err
		}
		out, err := reply(in)
		if err != nil {
			return nil, err
		}
		return &out, nil
	}
}

var service = grpc.ServiceDesc{
	ServiceName: "demo.Echo",
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "Say", Handler: unary(func(in []byte) ([]byte, error) {
			return append([]byte("hello "), in...), nil
		})},
		{MethodName: "Fail", Handler: unary(func([]byte) ([]byte, error) {
			return nil, status.Error(codes.Unavailable, "down")
		})},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "Count", ServerStreams: true, Handler: func(_ interface{}, s grpc.ServerStream) error {
			var in []byte
			if err := s.RecvMsg(&in); err != nil {
				return err
			}
			n := 0
			if len(in) > 0 {
				n = int(in[0])
			}
			for i := 0; i < n; i++ {
				out := []byte{byte(i)}
				if err := s.SendMsg(&out); err != nil {
					return err
				}
			}
			return nil
		}},
		{StreamName: "Sum", ClientStreams: true, Handler: func(_ interface{}, s grpc.ServerStream) error {
			n := 0
			for {
				var in []byte
				err := s.RecvMsg(&in)
				if err == io.EOF {
					break
				}
				if err != nil {
					return err
				}
				n++
			}
			out := []byte{byte(n)}
			return s.SendMsg(&out)
		}},
		{StreamName: "Chat", ServerStreams: true, ClientStreams: true, Handler: func(_ interface{}, s grpc.ServerStream) error {
			for {
				var in []byte
				err := s.RecvMsg(&in)
				if err == io.EOF {
					return nil
				}
				if err != nil {
					return err
				}
				if err := s.SendMsg(&in); err != nil {
					return err
				}
			}
		}},
	},
}

func serve(port string) {
	l, err := net.Listen("tcp", "127.0.0.1:"+port)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	s := grpc.NewServer(grpc.CustomCodec(raw{}))
	s.RegisterService(&service, struct{}{})
	s.Serve(l)
}

func serveH2c(port string) {
	hello := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/missing" {
			http.NotFound(w, r)
			return
		}
		io.WriteString(w, "hello h2c\n")
	})
	server := &http.Server{Addr: "127.0.0.1:" + port, Handler: h2c.NewHandler(hello, &http2.Server{})}
	if err := server.ListenAndServe(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
}

func call(conn *grpc.ClientConn, kind string) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	in := []byte("you")
	var out []byte
	stream := func(name string, client, server bool) (grpc.ClientStream, error) {
		desc := &grpc.StreamDesc{StreamName: name, ClientStreams: client, ServerStreams: server}
		return conn.NewStream(ctx, desc, "/demo.Echo/"+name)
	}
	switch kind {
	case "say":
		return conn.Invoke(ctx, "/demo.Echo/Say", &in, &out)
	case "fail":
		return conn.Invoke(ctx, "/demo.Echo/Fail", &in, &out)
	case "count", "sum", "chat":
		name := map[string]string{"count": "Count", "sum": "Sum", "chat": "Chat"}[kind]
		sent := map[string][]string{"count": {"\x03"}, "sum": {"a", "b"}, "chat": {"a", "b"}}[kind]
		s, err := stream(name, kind != "count", kind != "sum")
		if err != nil {
			return err
		}
		for _, m := range sent {
			b := []byte(m)
			if err := s.SendMsg(&b); err != nil {
				return err
			}
		}
		s.CloseSend()
		for {
			if err := s.RecvMsg(&out); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			} else if kind == "sum" {
				return nil
			}
		}
	}
	return fmt.Errorf("unknown call %s", kind)
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: gogrpc serve PORT | gogrpc call PORT CALL...")
		os.Exit(2)
	}
	if os.Args[1] == "serve" {
		serve(os.Args[2])
		return
	}
	if os.Args[1] == "h2c" {
		serveH2c(os.Args[2])
		return
	}
	conn, err := grpc.Dial("127.0.0.1:"+os.Args[2], grpc.WithInsecure(),
		grpc.WithDefaultCallOptions(grpc.ForceCodec(raw{})))
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	var names []string
	for _, kind := range os.Args[3:] {
		names = append(names, status.Code(call(conn, kind)).String())
	}
	conn.Close()
	fmt.Println(strings.Join(names, " "))
}
