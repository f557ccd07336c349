// A gRPC client (@grpc/grpc-js) for grpc_js_server.js or grpc_server.py: the calls named on
// the command line, in order, on one channel (one connection); prints each call's status code
// name. `many100` makes 100 Say calls at once (100 concurrent streams) and prints one name for
// all of them if they agree. Over TLS when given the server's certificate.
// usage: node grpc_js_client.js PORT [--tls CERT] CALL...   CALL: say|fail|count|sum|chat|many100
const fs = require("fs");
const grpc = require("@grpc/grpc-js");

let [port, ...calls] = process.argv.slice(2);
let credentials = grpc.credentials.createInsecure();
let options = {};
if (calls[0] === "--tls") {
  credentials = grpc.credentials.createSsl(fs.readFileSync(calls[1]));
  // The certificate names localhost; the name is sent as SNI (an address may not be).
  options = { "grpc.ssl_target_name_override": "localhost" };
  calls = calls.slice(2);
}
const client = new grpc.Client(`127.0.0.1:${port}`, credentials, options);
const id = (b) => b;
const name = (err) => (err ? grpc.status[err.code] : "OK");

function call(kind) {
  return new Promise((resolve) => {
    const path = (m) => `/demo.Echo/${m}`;
    switch (kind) {
      case "say":
      case "fail":
        client.makeUnaryRequest(path(kind === "say" ? "Say" : "Fail"), id, id,
          Buffer.from("you"), (err) => resolve(name(err)));
        break;
      case "count": {
        const s = client.makeServerStreamRequest(path("Count"), id, id, Buffer.from([3]));
        s.on("data", () => {});
        s.on("error", (err) => resolve(name(err)));
        s.on("status", (st) => st.code === 0 && resolve("OK"));
        break;
      }
      case "sum": {
        const s = client.makeClientStreamRequest(path("Sum"), id, id, (err) => resolve(name(err)));
        for (const m of ["a", "b", "c", "d"]) s.write(Buffer.from(m));
        s.end();
        break;
      }
      case "chat": {
        const s = client.makeBidiStreamRequest(path("Chat"), id, id);
        s.on("data", () => {});
        s.on("error", (err) => resolve(name(err)));
        s.on("status", (st) => st.code === 0 && resolve("OK"));
        s.write(Buffer.from("1"));
        s.write(Buffer.from("2"));
        s.end();
        break;
      }
      case "many100": {
        const all = [];
        for (let i = 0; i < 100; i++) all.push(call("say"));
        Promise.all(all).then((names) => {
          const distinct = [...new Set(names)];
          resolve(distinct.length === 1 ? distinct[0] : names.join(","));
        });
        break;
      }
      default:
        resolve(`unknown call ${kind}`);
    }
  });
}

(async () => {
  const codes = [];
  for (const kind of calls) codes.push(await call(kind));
  client.close();
  console.log(codes.join(" "));
})();
