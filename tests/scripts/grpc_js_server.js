// A gRPC server (@grpc/grpc-js) with the service demo.Echo on raw bytes, as grpc_server.py:
// Say (unary), Fail (UNAVAILABLE, "down"), Count (server streaming: as many messages as the
// request's first byte), Sum (client streaming: the number of messages), Chat (bidirectional:
// each message echoed). Over h2c, or over TLS when given a certificate and its key.
// usage: node grpc_js_server.js PORT [CERT KEY]
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

const [port, cert, key] = process.argv.slice(2);
const raw = { serialize: (b) => b, deserialize: (b) => b };
function method(name, requestStream, responseStream) {
  return {
    path: `/demo.Echo/${name}`,
    requestStream,
    responseStream,
    requestSerialize: raw.serialize,
    requestDeserialize: raw.deserialize,
    responseSerialize: raw.serialize,
    responseDeserialize: raw.deserialize,
  };
}
const service = {
  Say: method("Say", false, false),
  Fail: method("Fail", false, false),
  Count: method("Count", false, true),
  Sum: method("Sum", true, false),
  Chat: method("Chat", true, true),
};
const handlers = {
  Say: (call, done) => done(null, Buffer.concat([Buffer.from("hello "), call.request])),
  Fail: (call, done) => done({ code: grpc.status.UNAVAILABLE, details: "down" }),
  Count: (call) => {
    const n = call.request.length ? call.request[0] : 0;
    for (let i = 0; i < n; i++) call.write(Buffer.from([i]));
    call.end();
  },
  Sum: (call, done) => {
    let n = 0;
    call.on("data", () => n++);
    call.on("end", () => done(null, Buffer.from([n])));
  },
  Chat: (call) => {
    call.on("data", (m) => call.write(m));
    call.on("end", () => call.end());
  },
};
const server = new grpc.Server();
server.addService(service, handlers);
const credentials = cert
  ? grpc.ServerCredentials.createSsl(null, [
      { cert_chain: fs.readFileSync(cert), private_key: fs.readFileSync(key) },
    ])
  : grpc.ServerCredentials.createInsecure();
server.bindAsync(`127.0.0.1:${port}`, credentials, (err) => {
  if (err) {
    console.error(err);
    process.exit(1);
  }
});
