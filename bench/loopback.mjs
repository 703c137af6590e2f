// node --import bench/loopback.mjs: a server that listens on a port without naming an
// address (Portkey's gateway: @hono/node-server's serve({port})) listens on 127.0.0.1
// only, not on every address; the bench's traffic stays on the loopback.
import net from "node:net";

const listen = net.Server.prototype.listen;
net.Server.prototype.listen = function (...args) {
  if (typeof args[0] === "number" && (args[1] === undefined || typeof args[1] === "function")) {
    if (typeof args[1] === "function") args.splice(1, 0, "127.0.0.1");
    else args[1] = "127.0.0.1";
  }
  return listen.apply(this, args);
};
