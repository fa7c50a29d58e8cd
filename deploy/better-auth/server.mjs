// The Better Auth companion: Better Auth's routes at /api/auth/*, the demo page at /, and a
// health probe at /healthz, on Node's own HTTP server (no framework: three routes need none).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import { createServer } from "node:http";
import { isIP } from "node:net";
import { toNodeHandler } from "better-auth/node";
import { CLIENT_ADDRESS_HEADER, createAuth, createPool, readSettings } from "./auth.mjs";

const settings = readSettings();
const pool = createPool(settings);
const auth = createAuth(settings, pool);
const handleAuth = toNodeHandler(auth);
const page = demoPage(settings);
const port = Number(process.env.PORT || 3001);
const host = process.env.HOST || "0.0.0.0";

/** The page with the API's address filled in, and a CSP that allows exactly its one script. */
function demoPage({ todoApiURL }) {
  const apiOrigin = new URL(todoApiURL).origin;
  const html = readFileSync(new URL("./public/index.html", import.meta.url), "utf8").replace(
    'content="http://127.0.0.1:8000"',
    `content="${apiOrigin}"`,
  );
  const scripts = [...html.matchAll(/<script>([\s\S]*?)<\/script>/g)].map(
    ([, code]) => `'sha256-${createHash("sha256").update(code).digest("base64")}'`,
  );
  const policy = [
    "default-src 'none'",
    `script-src ${scripts.join(" ")}`,
    "style-src 'unsafe-inline'",
    "img-src 'self' data:",
    `connect-src 'self' ${apiOrigin}`,
    "form-action 'none'",
    "frame-ancestors 'none'",
    "base-uri 'none'",
  ].join("; ");
  return {
    body: Buffer.from(html),
    headers: {
      "Content-Type": "text/html; charset=utf-8",
      "Content-Security-Policy": policy,
      "Cache-Control": "no-store",
      "X-Content-Type-Options": "nosniff",
      "Referrer-Policy": "no-referrer",
    },
  };
}

/**
 * The client's address, as far as this deployment can vouch for it: the socket's peer, unless
 * that is a trusted proxy (TRUSTED_PROXIES); then the address that proxy appended to
 * X-Forwarded-For, and so on leftwards while the address found is a trusted proxy's. What lies
 * further left is whatever the client wrote, and is never read; nor is the header at all when
 * the peer is not a trusted proxy. A hop that is not a plain address stops the walk there.
 */
function clientAddress(request) {
  let address = request.socket.remoteAddress;
  const hops = String(request.headers["x-forwarded-for"] ?? "").split(",");
  const trusted = (ip) => settings.trustedProxies.check(ip, isIP(ip) === 6 ? "ipv6" : "ipv4");
  while (address && trusted(address)) {
    const hop = hops.pop()?.trim();
    if (!hop || !isIP(hop)) break;
    address = hop;
  }
  return address;
}

async function healthz(response) {
  // Ready means the database answers: without it no one can sign in.
  let status = 200;
  try {
    await pool.query("SELECT 1");
  } catch {
    status = 503;
  }
  response.writeHead(status, { "Content-Type": "application/json", "Cache-Control": "no-store" });
  response.end(JSON.stringify({ status: status === 200 ? "ok" : "database unavailable" }));
}

const server = createServer((request, response) => {
  const path = (request.url || "/").split("?")[0];
  if (path === "/api/auth" || path.startsWith("/api/auth/")) {
    const address = clientAddress(request);
    if (address) request.headers[CLIENT_ADDRESS_HEADER] = address;
    else delete request.headers[CLIENT_ADDRESS_HEADER];
    handleAuth(request, response).catch((error) => {
      console.error("auth handler failed:", error);
      if (!response.headersSent) response.writeHead(500, { "Content-Type": "application/json" });
      response.end('{"message":"internal error"}');
    });
    return;
  }
  if (request.method !== "GET" && request.method !== "HEAD") {
    response.writeHead(405, { Allow: "GET, HEAD", "Content-Type": "application/json" });
    response.end('{"message":"method not allowed"}');
    return;
  }
  if (path === "/healthz") {
    healthz(response);
    return;
  }
  if (path === "/" || path === "/index.html") {
    response.writeHead(200, page.headers);
    response.end(request.method === "HEAD" ? undefined : page.body);
    return;
  }
  response.writeHead(404, { "Content-Type": "application/json" });
  response.end('{"message":"not found"}');
});
// Bounded waits: a client that stalls cannot hold a connection forever.
server.requestTimeout = 30_000;
server.headersTimeout = 10_000;
server.keepAliveTimeout = 75_000;

server.listen(port, host, () => {
  console.log(`better-auth companion on http://${host}:${server.address().port} (public ${settings.baseURL})`);
});

function shutdown(signal) {
  console.log(`${signal}: closing`);
  server.close(() => pool.end().finally(() => process.exit(0)));
  server.closeIdleConnections();
  // In-flight requests get 10 seconds; then the process goes anyway.
  setTimeout(() => process.exit(0), 10_000).unref();
}
process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
