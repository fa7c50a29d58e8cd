// The Better Auth instance: email and password accounts, and EdDSA JWTs for the Todo API.
//
// It shares the API's PostgreSQL database. Every table is created by the API's Alembic
// migrations (`todo-api migrate`), never by Better Auth's own migrate command, so the names
// below must match backend/todo_api/auth_schema.py and backend/todo_api/tasks/models.py
// column for column; tests/e2e/test_better_auth.py asks Better Auth's migration planner to
// confirm that they do.
import { BlockList, isIP } from "node:net";
import { betterAuth } from "better-auth";
import { jwt } from "better-auth/plugins";
import pg from "pg";

const DAY = 24 * 60 * 60;
// The one header Better Auth reads the client's address from (for its rate limits and the
// sessions' ip_address): server.mjs sets it on every request, replacing any value a client sent.
export const CLIENT_ADDRESS_HEADER = "x-companion-client-address";

/** A positive whole number of seconds from the environment, or `fallback`. */
function seconds(env, name, fallback) {
  const raw = env[name];
  if (raw === undefined || raw === "") return fallback;
  const value = Number(raw);
  if (!Number.isInteger(value) || value <= 0) {
    throw new Error(`${name} must be a positive whole number of seconds, not ${JSON.stringify(raw)}`);
  }
  return value;
}

/** TRUSTED_PROXIES: proxies' addresses and CIDR ranges, comma-separated; none by default. */
function trustedProxies(env) {
  const list = new BlockList();
  const entries = (env.TRUSTED_PROXIES || "").split(",").map((entry) => entry.trim());
  for (const entry of entries.filter(Boolean)) {
    const [address, prefix, ...rest] = entry.split("/");
    const type = { 4: "ipv4", 6: "ipv6" }[isIP(address)];
    const valid = type && rest.length === 0 && (prefix === undefined || /^\d+$/.test(prefix));
    try {
      if (!valid) throw new Error("not an address or range");
      if (prefix === undefined) list.addAddress(address, type);
      else list.addSubnet(address, Number(prefix), type); // throws for a prefix such as /33
    } catch {
      throw new Error(
        `TRUSTED_PROXIES: ${JSON.stringify(entry)} is not an IP address or CIDR range ` +
          "(list your proxies' own addresses, e.g. 10.0.0.0/24)",
      );
    }
  }
  return list;
}

function required(env, name, hint) {
  const value = env[name];
  if (!value) throw new Error(`${name} is not set: ${hint}`);
  return value;
}

/** The settings the companion reads from the environment (each one is in the README). */
export function readSettings(env = process.env) {
  const baseURL = new URL(
    required(env, "BETTER_AUTH_URL", "the companion's public origin, e.g. http://127.0.0.1:3001"),
  ).origin;
  const secret = required(env, "BETTER_AUTH_SECRET", "32+ random characters (openssl rand -base64 48)");
  if (secret.length < 32) throw new Error("BETTER_AUTH_SECRET must be at least 32 characters long");
  return {
    databaseURL: required(env, "DATABASE_URL", "the Todo API's PostgreSQL URL"),
    // Better Auth puts the base URL into `iss` and `aud`; the API expects exactly its origin.
    baseURL,
    secret,
    tokenSeconds: seconds(env, "JWT_EXPIRATION_SECONDS", 15 * 60),
    rotationSeconds: seconds(env, "JWKS_ROTATION_SECONDS", 30 * DAY),
    graceSeconds: seconds(env, "JWKS_GRACE_SECONDS", 30 * DAY),
    // Where the demo page sends its task requests.
    todoApiURL: env.TODO_API_URL || "http://127.0.0.1:8000",
    // Proxies whose X-Forwarded-For is believed (see clientAddress in server.mjs).
    trustedProxies: trustedProxies(env),
  };
}

const snake = (names) => Object.fromEntries(names.map((name) => [name, toSnake(name)]));
const toSnake = (name) => name.replace(/[A-Z]/g, (letter) => `_${letter.toLowerCase()}`);

/** Table and column names, as the API's migrations create them. */
export const schema = {
  user: {
    modelName: "users",
    fields: snake(["emailVerified", "createdAt", "updatedAt"]),
  },
  session: {
    modelName: "sessions",
    fields: snake(["expiresAt", "ipAddress", "userAgent", "userId", "createdAt", "updatedAt"]),
  },
  account: {
    modelName: "accounts",
    fields: snake([
      "accountId",
      "providerId",
      "userId",
      "accessToken",
      "refreshToken",
      "idToken",
      "accessTokenExpiresAt",
      "refreshTokenExpiresAt",
      "createdAt",
      "updatedAt",
    ]),
  },
  verification: {
    modelName: "verifications",
    fields: snake(["expiresAt", "createdAt", "updatedAt"]),
  },
  jwks: {
    modelName: "jwks",
    fields: snake(["publicKey", "privateKey", "createdAt", "expiresAt"]),
  },
};

/** The Better Auth options for `settings` (also what the migration planner is asked about). */
export function authOptions(settings, pool) {
  const { jwks, ...core } = schema;
  return {
    appName: "Todo",
    baseURL: settings.baseURL,
    secret: settings.secret,
    database: pool,
    // Other frontends' origins (a Next.js app, say) come from BETTER_AUTH_TRUSTED_ORIGINS,
    // comma-separated, which Better Auth reads itself; the companion's own origin is trusted.
    emailAndPassword: { enabled: true },
    // Better Auth's default reads X-Forwarded-For, which any client can write (a new address per
    // attempt escaped its sign-in limit); without that header it put every client in one bucket.
    advanced: { ipAddress: { ipAddressHeaders: [CLIENT_ADDRESS_HEADER] } },
    ...core,
    telemetry: { enabled: false },
    plugins: [
      jwt({
        jwks: {
          keyPairConfig: { alg: "EdDSA", crv: "Ed25519" },
          // A key signs new tokens for `rotationInterval`, then stays in the JWKS for
          // `gracePeriod` more, so tokens it signed keep verifying until they expire.
          rotationInterval: settings.rotationSeconds,
          gracePeriod: settings.graceSeconds,
        },
        jwt: { expirationTime: `${settings.tokenSeconds}s` },
        schema: { jwks },
      }),
    ],
  };
}

export function createPool(settings) {
  // Bounded: a database that does not answer fails a request instead of hanging it.
  return new pg.Pool({
    connectionString: settings.databaseURL,
    max: 10,
    connectionTimeoutMillis: 5000,
    idleTimeoutMillis: 30000,
  });
}

export function createAuth(settings, pool = createPool(settings)) {
  return betterAuth(authOptions(settings, pool));
}
