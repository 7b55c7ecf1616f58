#!/usr/bin/env node
// Starts @vercel/cosmosdb-server 1.0.1 in plain HTTP on 127.0.0.1 and patches it so that the Rust
// SDK `azure_data_cosmos` 1.0 works against it. Each patch is numbered as in README.md; they reach
// into the package's internals (lib/handler/*, lib/account/*), which is why package.json pins the
// exact version.
//
// Usage: node launcher.js --port P [--host 127.0.0.1] [--sweep-ms 250]
"use strict";

const path = require("path");

const PKG = path.dirname(require.resolve("@vercel/cosmosdb-server/package.json"));
const lib = (name) => require(path.join(PKG, "lib", name));

const EXPECTED_VERSION = "1.0.1";
const { version } = require("@vercel/cosmosdb-server/package.json");
if (version !== EXPECTED_VERSION) {
  // The patches below depend on the internals of exactly this version.
  console.error(`launcher.js: expected @vercel/cosmosdb-server ${EXPECTED_VERSION}, found ${version}`);
  process.exit(1);
}

function parseArgs(argv) {
  const args = { port: 0, host: "127.0.0.1", sweepMs: 250 };
  for (let i = 0; i < argv.length; i += 1) {
    const key = argv[i];
    const value = argv[i + 1];
    if (key === "--port" || key === "-p") {
      args.port = parseInt(value, 10);
      i += 1;
    } else if (key === "--host") {
      args.host = value;
      i += 1;
    } else if (key === "--sweep-ms") {
      args.sweepMs = parseInt(value, 10);
      i += 1;
    } else {
      console.error(`launcher.js: unknown argument ${key}`);
      process.exit(2);
    }
  }
  if (!Number.isInteger(args.port) || args.port < 0 || args.port > 65535) {
    console.error("launcher.js: --port must be 0-65535");
    process.exit(2);
  }
  return args;
}

// For diagnosis only: COSMOS_LAUNCHER_SKIP=4,5 leaves those patches out, to see what breaks.
const skipped = new Set(
  (process.env.COSMOS_LAUNCHER_SKIP || "").split(",").map((s) => s.trim()).filter(Boolean),
);
const patch = (n) => !skipped.has(String(n));

/** Replaces a handler module's default export; must run before lib/routes is loaded. */
function wrapHandler(name, wrap) {
  const mod = lib(path.join("handler", name));
  const original = mod.default;
  mod.default = wrap(original);
}

/** The partition key value named by `x-ms-documentdb-partitionkey`, or `undefined` for none. */
function headerPartitionKey(req) {
  let raw = req.headers["x-ms-documentdb-partitionkey"];
  if (Array.isArray(raw)) [raw] = raw;
  if (!raw) return undefined;
  let parsed;
  try {
    parsed = JSON.parse(raw);
  } catch (err) {
    return undefined;
  }
  const value = Array.isArray(parsed) ? parsed[0] : parsed;
  // `[{}]` is how SDKs say "no partition key" (a container without one).
  if (value === undefined || (typeof value === "object" && value !== null)) return undefined;
  return value;
}

const isTrue = lib("true-header").default;
const readJson = lib("json").default;
const readItems = lib("handler/_read-items").default;

// Patch 1: partition key range ids are strings in Cosmos DB; the server stores the one range it
// creates per container with the number 0, and the SDK rejects the number (503/20305 from
// `container_client()`).
if (patch(1)) {
  wrapHandler("read-partition-key-ranges", (original) => async (account, req, res, params) => {
    const body = await original(account, req, res, params);
    if (body && Array.isArray(body.PartitionKeyRanges)) {
      body.PartitionKeyRanges = body.PartitionKeyRanges.map((range) => ({
        ...range,
        id: String(range.id),
        parents: (range.parents || []).map(String),
      }));
    }
    return body;
  });
}

// Patch 2: reading a missing document throws a TypeError inside the handler (it reads a property
// of `undefined`), which the server answers with 500. Cosmos DB answers 404 NotFound.
if (patch(2)) {
  wrapHandler("read-document", (original) => async (account, req, res, params) => {
    const collection = account.database(params.dbId).collection(params.collId);
    if (collection.read() && !isTrue(req, "x-ms-documentdb-query-enablecrosspartition")) {
      const pk = headerPartitionKey(req);
      const doc = collection.document(params.docId, pk === undefined ? params.docId : pk).read();
      if (!doc) {
        res.statusCode = 404;
        return {
          code: "NotFound",
          message: "Entity with the specified id does not exist in the system.",
        };
      }
    }
    return original(account, req, res, params);
  });
}

// Not a patch, a test aid: COSMOS_LAUNCHER_THROTTLE=N answers the first N document reads and
// creates with 429 TooManyRequests (`x-ms-retry-after-ms: 20`), to see how a client copes.
let throttleBudget = parseInt(process.env.COSMOS_LAUNCHER_THROTTLE || "0", 10) || 0;
function throttled(handler) {
  return async (account, req, res, params) => {
    if (throttleBudget > 0) {
      throttleBudget -= 1;
      res.statusCode = 429;
      res.setHeader("x-ms-retry-after-ms", "20");
      res.setHeader("x-ms-substatus", "3200");
      return { code: "TooManyRequests", message: "Request rate is large (test throttle)" };
    }
    return handler(account, req, res, params);
  };
}
wrapHandler("create-document", throttled);
wrapHandler("read-document", throttled);

// Patch 5: a pass-through query plan: one range covering the whole key space, nothing to rewrite
// or aggregate client-side, so the SDK sends the query as is and the server evaluates it (COUNT,
// ORDER BY, ... included; there is only one physical partition).
function passThroughPlan() {
  return {
    partitionedQueryExecutionInfoVersion: 2,
    queryInfo: {
      distinctType: "None",
      top: null,
      offset: null,
      limit: null,
      orderBy: [],
      orderByExpressions: [],
      groupByExpressions: [],
      groupByAliases: [],
      aggregates: [],
      groupByAliasToAggregateType: {},
      rewrittenQuery: "",
      hasSelectValue: false,
      dCountInfo: null,
      hasNonStreamingOrderBy: false,
    },
    queryRanges: [{ min: "", max: "FF", isMinInclusive: true, isMaxInclusive: false }],
  };
}

// Patches 3, 4 and 5: the document query handler, rewritten around the package's own query engine.
wrapHandler("query-documents", () => async (account, req, res, { dbId, collId }) =>
  readItems(req, res, "Documents", async ({ continuation, maxItemCount }) => {
    const body = await readJson(req);
    if (patch(5) && isTrue(req, "x-ms-cosmos-is-query-plan-request")) {
      return passThroughPlan();
    }
    if (!body.query) {
      res.statusCode = 400;
      return { message: "missing query" };
    }
    const collection = account.database(dbId).collection(collId);
    const props = collection.read();
    if (!props) return null;
    const items = collection.documents;
    // Patch 4: a query that names a partition sees only that partition's items (the server
    // ignored the header and answered from every partition).
    const pk = headerPartitionKey(req);
    // Patch 3: a query scoped to a partition key range (`x-ms-documentdb-partitionkeyrangeid`)
    // runs over the whole container: there is one range, "" to "FF". Without this the server
    // demanded a partition key filter in the query text and answered 400.
    const scopedToRange =
      patch(3) && Boolean(req.headers["x-ms-documentdb-partitionkeyrangeid"]);
    const crossPartition =
      scopedToRange || isTrue(req, "x-ms-documentdb-query-enablecrosspartition");
    if (pk === undefined && !crossPartition) {
      const paths = ((props.partitionKey || {}).paths) || [];
      const query = items._getQuery(body.query);
      if (paths.length && !query.containsPartitionKeys(paths)) {
        res.statusCode = 400;
        return { message: "missing partition keys" };
      }
    }
    let data = [...items._data.values()].map((item) => item.read());
    if (patch(4) && pk !== undefined) {
      data = data.filter((doc) => items._getPartition(doc) === pk);
    }
    const compositeIndexes =
      (props.indexingPolicy ? props.indexingPolicy.compositeIndexes : null) || [];
    try {
      return items._getQuery(body.query).exec(data, {
        parameters: body.parameters,
        udf: items._userDefinedFunctions(),
        maxItemCount,
        continuation,
        compositeIndexes,
      });
    } catch (err) {
      res.statusCode = 400;
      return { code: "BadRequest", message: err.message };
    }
  }),
);

// Patch 7: the account document advertises `https://` locations even when the server speaks
// plain HTTP, and SDKs follow the advertised locations. Advertise what is actually served.
// Also keeps every account so that the TTL sweeper (patch 6) can reach the data.
const accounts = [];
const accountModule = lib("account");
const OriginalAccount = accountModule.default;
class HttpAccount extends OriginalAccount {
  constructor(host, port) {
    super(host, port);
    const data = this.read();
    for (const key of patch(7) ? ["writableLocations", "readableLocations"] : []) {
      data[key] = data[key].map((location) => ({
        ...location,
        databaseAccountEndpoint: location.databaseAccountEndpoint.replace(/^https:/, "http:"),
      }));
    }
    accounts.push(this);
  }
}
accountModule.default = HttpAccount;

// Patch 6: time to live. A container's `defaultTtl` (seconds; -1 = items never expire unless
// they say so; absent = TTL off) and an item's own `ttl` (overrides the default; -1 = never)
// are honoured by a sweeper that deletes items `ttl` seconds after their last write (`_ts`).
// Like Cosmos DB, deletion is lazy: an expired item may be visible for up to one sweep.
function effectiveTtl(containerDefault, item) {
  if (containerDefault === undefined || containerDefault === null) return null;
  const own = item.ttl;
  const ttl = typeof own === "number" ? own : containerDefault;
  return ttl > 0 ? ttl : null;
}

function sweep() {
  const nowSecs = Date.now() / 1000;
  for (const account of accounts) {
    for (const database of account.databases._data.values()) {
      for (const collection of database.collections._data.values()) {
        const props = collection.read();
        if (!props) continue;
        const items = collection.documents;
        const expired = [];
        for (const item of items._data.values()) {
          const doc = item.read();
          const ttl = effectiveTtl(props.defaultTtl, doc);
          if (ttl !== null && doc._ts + ttl <= nowSecs) expired.push(doc);
        }
        for (const doc of expired) {
          items.delete(doc.id, items._getPartition(doc));
        }
      }
    }
  }
}

const args = parseArgs(process.argv.slice(2));
// Loaded only now: lib/routes binds the handler exports patched above when it is first required.
const { createHttpServer } = lib("index");
const server = createHttpServer({ keepAlive: true });
server.listen(args.port, args.host, () => {
  const { port } = server.address();
  console.log(`cosmosdb-server (patched) listening on http://${args.host}:${port}/`);
});
const sweeper = setInterval(() => {
  if (!patch(6)) return;
  try {
    sweep();
  } catch (err) {
    console.error("launcher.js: TTL sweep failed:", err);
  }
}, args.sweepMs);
sweeper.unref();

for (const signal of ["SIGINT", "SIGTERM"]) {
  process.on(signal, () => {
    server.close();
    process.exit(0);
  });
}
