#!/usr/bin/env node
// Flightlog from Node.js: proves the contract in protos/ is usable from a language other than
// Python. It loads the .proto files at run time with @grpc/proto-loader (no generated code) and
// runs one session's life cycle against a live server, printing one line per check and exiting
// non-zero at the first failure. tests/polyglot/test_node_client.py runs it in `make test`.
//
//   FLIGHTLOG_ENDPOINT=127.0.0.1:50051 FLIGHTLOG_API_KEY=... FLIGHTLOG_ORG_ID=og_... \
//   FLIGHTLOG_PROTO_PATH=.venv/lib/python3.11/site-packages node client.mjs
//
// FLIGHTLOG_PROTO_PATH (or --proto-path DIR, repeatable) names directories holding
// google/rpc/status.proto and google/rpc/error_details.proto, which are not part of protos/; the
// Python package googleapis-common-protos ships them in site-packages. Without it the program
// looks in the repository's .venv. The google/protobuf well-known types are built into protobufjs.
//
// FLIGHTLOG_ENDPOINT is host:port (plaintext) or https://host:port (TLS with the system roots).
// FLIGHTLOG_ORG_ID may be empty for a principal that belongs to exactly one org.

import { existsSync, readdirSync } from 'node:fs';
import { randomBytes } from 'node:crypto';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import protobuf from 'protobufjs';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const REPO_ROOT = path.resolve(HERE, '..', '..', '..');
const REPO_PROTOS = path.join(REPO_ROOT, 'protos');
const CALL_TIMEOUT_MS = 30_000;

// ------------------------------------------------------------------------------------------------
// Reporting

class CheckFailed extends Error {}

let checks = 0;

function pass(what) {
  checks += 1;
  console.log(`ok   ${String(checks).padStart(2)} ${what}`);
}

function fail(what, detail) {
  console.log(`FAIL ${String(checks + 1).padStart(2)} ${what}${detail ? `: ${detail}` : ''}`);
  throw new CheckFailed(what);
}

function check(what, condition, detail) {
  if (condition) {
    pass(what);
  } else {
    fail(what, typeof detail === 'function' ? detail() : detail);
  }
}

function checkEqual(what, actual, expected) {
  const a = JSON.stringify(actual);
  const e = JSON.stringify(expected);
  check(what, a === e, () => `expected ${e}, got ${a}`);
}

function show(value) {
  return JSON.stringify(value, (_key, v) => (typeof v === 'bigint' ? String(v) : v));
}

// ------------------------------------------------------------------------------------------------
// Configuration

function requiredEnv(name) {
  const value = process.env[name];
  if (!value) {
    console.log(`FAIL  0 configuration: environment variable ${name} is not set`);
    process.exit(2);
  }
  return value;
}

function protoPathArgs() {
  const dirs = [];
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 1) {
    if (argv[i] === '--proto-path' && i + 1 < argv.length) {
      dirs.push(argv[(i += 1)]);
    } else if (argv[i].startsWith('--proto-path=')) {
      dirs.push(argv[i].slice('--proto-path='.length));
    } else {
      console.log(`FAIL  0 configuration: unknown argument ${argv[i]}`);
      process.exit(2);
    }
  }
  for (const dir of (process.env.FLIGHTLOG_PROTO_PATH ?? '').split(path.delimiter)) {
    if (dir) dirs.push(dir);
  }
  if (dirs.length === 0) {
    // Fallback for running by hand: googleapis-common-protos in the repository's virtualenv.
    const lib = path.join(REPO_ROOT, '.venv', 'lib');
    if (existsSync(lib)) {
      for (const python of readdirSync(lib).sort()) {
        dirs.push(path.join(lib, python, 'site-packages'));
      }
    }
  }
  return dirs.map((dir) => path.resolve(dir));
}

function channelTarget(endpoint) {
  if (endpoint.startsWith('https://')) {
    return [endpoint.slice('https://'.length), grpc.credentials.createSsl()];
  }
  const plain = endpoint.startsWith('http://') ? endpoint.slice('http://'.length) : endpoint;
  return [plain, grpc.credentials.createInsecure()];
}

// ------------------------------------------------------------------------------------------------
// Loading the contract

// longs: String keeps int64 nanosecond timestamps exact (they exceed 2**53); defaults: false and
// oneofs: true keep proto3 `optional` presence visible: an absent optional field is `undefined`,
// and its synthetic oneof (`_min_timestamp_ns`) names the member that is set.
const LOADER_OPTIONS = {
  keepCase: true,
  longs: String,
  enums: String,
  defaults: false,
  arrays: true,
  oneofs: true,
};

function loadContract(includeDirs) {
  const dir = path.join(REPO_PROTOS, 'flightlog', 'v1');
  const files = readdirSync(dir)
    .filter((name) => name.endsWith('.proto'))
    .sort()
    .map((name) => `flightlog/v1/${name}`);
  const definition = protoLoader.loadSync(files, {
    ...LOADER_OPTIONS,
    includeDirs: [REPO_PROTOS, ...includeDirs],
  });
  return { files, v1: grpc.loadPackageDefinition(definition).flightlog.v1 };
}

// The rich error model: grpc-status-details-bin is a serialized google.rpc.Status whose details
// are google.protobuf.Any values. proto-loader builds service definitions only, so the status
// types are decoded with protobufjs directly.
function loadStatusTypes(includeDirs) {
  const root = new protobuf.Root();
  root.resolvePath = (origin, target) => {
    for (const dir of includeDirs) {
      const candidate = path.join(dir, target);
      if (existsSync(candidate)) return candidate;
    }
    return protobuf.util.path.resolve(origin, target);
  };
  const wanted = ['google/rpc/status.proto', 'google/rpc/error_details.proto'];
  for (const file of wanted) {
    if (!includeDirs.some((dir) => existsSync(path.join(dir, file)))) {
      console.log(
        `FAIL  0 configuration: ${file} not found in [${includeDirs.join(', ')}]; ` +
          'pass --proto-path or FLIGHTLOG_PROTO_PATH (site-packages of googleapis-common-protos)',
      );
      process.exit(2);
    }
  }
  root.loadSync(wanted, { keepCase: true });
  return root;
}

function decodeRichStatus(root, error) {
  const raw = error?.metadata?.get?.('grpc-status-details-bin') ?? [];
  if (raw.length === 0) return null;
  const Status = root.lookupType('google.rpc.Status');
  const status = Status.decode(raw[0]);
  const details = status.details.map((any) => {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf('/') + 1);
    let type;
    try {
      type = root.lookupType(typeName);
    } catch {
      return { type: typeName, undecoded: Buffer.from(any.value).toString('base64') };
    }
    const message = type.toObject(type.decode(any.value), {
      longs: String,
      enums: String,
      defaults: true,
      arrays: true,
      objects: true,
    });
    return { type: typeName, ...message };
  });
  return { code: status.code, message: status.message, details };
}

// ------------------------------------------------------------------------------------------------
// Calls

const CODE_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, code]) => [code, name]));

function deadline() {
  return new Date(Date.now() + CALL_TIMEOUT_MS);
}

function describeError(statusRoot, error) {
  const code = CODE_NAMES[error.code] ?? String(error.code);
  let rich = null;
  try {
    rich = decodeRichStatus(statusRoot, error);
  } catch (decodeError) {
    rich = `undecodable grpc-status-details-bin: ${decodeError.message}`;
  }
  return `${code}: ${error.details}${rich ? ` ${show(rich)}` : ''}`;
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: deadline() }, (error, response) => {
      if (error) reject(error);
      else resolve(response);
    });
  });
}

// Reads a server stream to its end and returns the batches. Resolves only when both the stream
// has ended and the status is OK, so a stream cut off by an error is never taken as complete.
function collect(client, method, request) {
  return new Promise((resolve, reject) => {
    const batches = [];
    let ended = false;
    let ok = false;
    const done = () => {
      if (ended && ok) resolve(batches);
    };
    const call = client[method](request, { deadline: deadline() });
    call.on('data', (batch) => batches.push(batch));
    call.on('error', reject);
    call.on('status', (status) => {
      if (status.code === grpc.status.OK) {
        ok = true;
        done();
      }
    });
    call.on('end', () => {
      ended = true;
      done();
    });
  });
}

// Expects a call to fail with `code` and returns the error with its decoded rich status.
async function expectError(statusRoot, what, promise, code) {
  let response;
  try {
    response = await promise;
  } catch (error) {
    if (error.code !== code) {
      fail(what, `expected ${CODE_NAMES[code]}, got ${describeError(statusRoot, error)}`);
    }
    pass(`${what}: ${CODE_NAMES[code]} (${error.details})`);
    return { error, rich: decodeRichStatus(statusRoot, error) };
  }
  return fail(what, `expected ${CODE_NAMES[code]}, got a response ${show(response)}`);
}

function errorInfo(rich) {
  return rich?.details.find((d) => d.type === 'google.rpc.ErrorInfo');
}

function badRequest(rich) {
  return rich?.details.find((d) => d.type === 'google.rpc.BadRequest');
}

// ------------------------------------------------------------------------------------------------
// The scenario

// 2023-11-14T22:13:20Z in nanoseconds: past 2**53, so a lossy int64 would show.
const BASE_NS = 1_700_000_000_000_000_000n;
const ts = (offset) => String(BASE_NS + BigInt(offset));

async function scenario(v1, statusRoot, target, credentials, orgId) {
  const addAuth = (options, nextCall) =>
    new grpc.InterceptingCall(nextCall(options), {
      start(metadata, listener, next) {
        metadata.set('authorization', `Bearer ${process.env.FLIGHTLOG_API_KEY}`);
        if (orgId) metadata.set('x-org-id', orgId);
        next(metadata, listener);
      },
    });
  const clientOptions = { interceptors: [addAuth] };
  const catalog = new v1.CatalogService(target, credentials, clientOptions);
  const sessions = new v1.SessionService(target, credentials, clientOptions);
  const clients = [catalog, sessions];

  // Any unexpected gRPC error fails the step that made the call, with the decoded details.
  const step = async (what, fn) => {
    try {
      return await fn();
    } catch (error) {
      if (error instanceof CheckFailed) throw error;
      if (typeof error?.code === 'number') return fail(what, describeError(statusRoot, error));
      throw error;
    }
  };

  try {
    const run = `${Date.now().toString(36)}-${randomBytes(4).toString('hex')}`;
    const deviceA = `node-${run}-a`;
    const deviceB = `node-${run}-b`;

    // Devices.
    for (const deviceId of [deviceA, deviceB]) {
      await step(`CreateDevice ${deviceId}`, async () => {
        const { device } = await unary(catalog, 'CreateDevice', {
          device_id: deviceId,
          name: `Node polyglot ${deviceId}`,
        });
        check(`CreateDevice ${deviceId} returns the device`, device?.device_id === deviceId, () =>
          show(device),
        );
        if (orgId) checkEqual(`CreateDevice ${deviceId} is in the acting org`, device.org_id, orgId);
      });
    }

    // Dataset.
    const dataset = await step('CreateDataset', async () => {
      const { dataset: created } = await unary(catalog, 'CreateDataset', {
        name: `node polyglot ${run}`,
        device_id: deviceA,
      });
      check('CreateDataset returns a ds_ id', created?.dataset_id?.startsWith('ds_'), () =>
        show(created),
      );
      checkEqual('CreateDataset keeps the device', created.device_id, deviceA);
      return created;
    });

    // Files with topic partitions and extents. f2 stores extents relative to its offset.
    const partition = (topic_name, schema_name, message_count, extents) => ({
      topic_name,
      schema_name,
      message_encoding: 'cdr',
      message_count: String(message_count),
      extents: extents.map(([min, max]) => ({ min_timestamp_ns: min, max_timestamp_ns: max })),
    });
    const fileSpecs = [
      {
        key: 'f1',
        device_id: deviceA,
        unix_epoch_offset_ns: '0',
        partitions: [
          partition('/imu', 'sensor_msgs/msg/Imu', 100, [[ts(100), ts(200)]]),
          partition('/odom', 'nav_msgs/msg/Odometry', 50, [[ts(150), ts(300)]]),
        ],
        window: [ts(100), ts(300)],
      },
      {
        key: 'f2',
        device_id: deviceB,
        unix_epoch_offset_ns: ts(1000),
        partitions: [
          partition('/camera/front', 'sensor_msgs/msg/Image', 10, [['0', '50']]),
          partition('/odom', 'nav_msgs/msg/Odometry', 20, [['500', '600']]),
        ],
        window: [ts(1000), ts(1600)],
      },
      {
        key: 'f3',
        device_id: deviceB,
        unix_epoch_offset_ns: '0',
        partitions: [
          partition('/lidar', 'sensor_msgs/msg/PointCloud2', 30, [[ts(5000), ts(6000)]]),
          partition('/gps', 'sensor_msgs/msg/NavSatFix', 5, [[ts(9000), ts(9100)]]),
          partition('/diagnostics', 'diagnostic_msgs/msg/DiagnosticArray', 0, []),
        ],
        window: [ts(5000), ts(9100)],
      },
    ];
    const files = {};
    for (const spec of fileSpecs) {
      files[spec.key] = await step(`RegisterFile ${spec.key}`, async () => {
        const { file } = await unary(catalog, 'RegisterFile', {
          dataset_id: dataset.dataset_id,
          relative_path: `flights/${run}/${spec.key}.mcap`,
          size_bytes: '4096',
          device_id: spec.device_id,
          unix_epoch_offset_ns: spec.unix_epoch_offset_ns,
          partitions: spec.partitions,
        });
        check(`RegisterFile ${spec.key} returns an fl_ id`, file?.file_id?.startsWith('fl_'), () =>
          show(file),
        );
        checkEqual(
          `RegisterFile ${spec.key} window is the extents plus the offset`,
          [file.min_timestamp_ns, file.max_timestamp_ns],
          spec.window,
        );
        checkEqual(`RegisterFile ${spec.key} keeps the device`, file.device_id, spec.device_id);
        return file;
      });
    }

    // Session with both devices.
    const session = await step('CreateSession', async () => {
      const { session: created } = await unary(sessions, 'CreateSession', {
        name: `node polyglot ${run}`,
        device_ids: [deviceA, deviceB],
        tags: ['polyglot', `run-${run}`],
      });
      check('CreateSession returns an ss_ id', created?.session_id?.startsWith('ss_'), () =>
        show(created),
      );
      check(
        'CreateSession: a new session has no bounds (optional int64 absent)',
        created.min_timestamp_ns === undefined && created.max_timestamp_ns === undefined,
        () => show(created),
      );
      return created;
    });
    const sessionId = session.session_id;

    await step('ListSessionDevices', async () => {
      const batches = await collect(sessions, 'ListSessionDevices', { session_id: sessionId });
      const ids = batches.flatMap((b) => b.devices ?? []).map((d) => d.device_id);
      checkEqual('ListSessionDevices lists both devices', [...ids].sort(), [deviceA, deviceB].sort());
    });

    // Contributions: f1 whole, then f2 and f3 clipped to windows.
    await step('AddSessionFiles whole', async () => {
      const { session: after } = await unary(sessions, 'AddSessionFiles', {
        session_id: sessionId,
        files: [{ file_id: files.f1.file_id }],
      });
      checkEqual(
        'AddSessionFiles f1 whole: bounds are the file window',
        [after.min_timestamp_ns, after.max_timestamp_ns],
        [ts(100), ts(300)],
      );
    });
    await step('AddSessionFiles windows', async () => {
      const { session: after } = await unary(sessions, 'AddSessionFiles', {
        session_id: sessionId,
        files: [
          {
            file_id: files.f2.file_id,
            range_min_timestamp_ns: ts(1000),
            range_max_timestamp_ns: ts(1200),
          },
          {
            file_id: files.f3.file_id,
            range_min_timestamp_ns: ts(5500),
            range_max_timestamp_ns: ts(5600),
          },
        ],
      });
      checkEqual(
        'AddSessionFiles f2, f3 windowed: bounds span f1 whole to the end of the f3 window',
        [after.min_timestamp_ns, after.max_timestamp_ns],
        [ts(100), ts(5600)],
      );
    });
    await step('ListSessionFiles', async () => {
      const batches = await collect(sessions, 'ListSessionFiles', { session_id: sessionId });
      const got = batches
        .flatMap((b) => b.files ?? [])
        .map((f) => [f.file_id, f.range_min_timestamp_ns ?? null, f.range_max_timestamp_ns ?? null]);
      // f1 was added first; f2 and f3 in one later call, whose relative order the contract
      // leaves open, so they are compared sorted.
      const [first, ...rest] = got;
      checkEqual(
        'ListSessionFiles: f1 whole (no range) first, then f2 and f3 with their windows',
        [first, ...rest.sort((a, b) => (a[0] < b[0] ? -1 : 1))],
        [
          [files.f1.file_id, null, null],
          ...[
            [files.f2.file_id, ts(1000), ts(1200)],
            [files.f3.file_id, ts(5500), ts(5600)],
          ].sort((a, b) => (a[0] < b[0] ? -1 : 1)),
        ],
      );
    });

    // Listing sessions: the whole org to the end, then by device one per batch.
    await step('ListSessions', async () => {
      const batches = await collect(sessions, 'ListSessions', { page_size: 100 });
      const ids = batches.flatMap((b) => b.sessions ?? []).map((s) => s.session_id);
      check(
        `ListSessions streamed ${ids.length} session(s) in ${batches.length} batch(es) to the end, ours included`,
        ids.includes(sessionId),
        () => `${sessionId} missing`,
      );
      check('ListSessions repeats no session', new Set(ids).size === ids.length, () => show(ids));
    });
    await step('ListSessions by device', async () => {
      const batches = await collect(sessions, 'ListSessions', {
        filter: { device_id: deviceA },
        page_size: 1,
      });
      const ids = batches.flatMap((b) => b.sessions ?? []).map((s) => s.session_id);
      checkEqual('ListSessions filtered by device returns only our session', ids, [sessionId]);
    });

    // Topics: every partition of a contributing file overlapping [100, 5600], one per identity.
    await step('ListSessionTopics', async () => {
      const batches = await collect(sessions, 'ListSessionTopics', {
        session_id: sessionId,
        page_size: 2,
      });
      const topics = batches.flatMap((b) => b.topics ?? []);
      checkEqual(
        `ListSessionTopics streamed ${batches.length} batch(es) to the end: names in order`,
        topics.map((t) => t.name),
        ['/camera/front', '/imu', '/lidar', '/odom'],
      );
      check(
        'ListSessionTopics: every topic has a ti_ id',
        topics.every((t) => t.topic_id?.startsWith('ti_')),
        () => show(topics),
      );
    });

    // Metrics with an explicit device; one NaN entry must fail on its own.
    await step('PublishSessionMetrics', async () => {
      const response = await unary(sessions, 'PublishSessionMetrics', {
        session_id: sessionId,
        metrics: [
          { name: 'node.max_altitude_m', value: 120.5 },
          { name: 'node.battery_min_pct', value: 41 },
          { name: 'node.not_a_number', value: Number.NaN },
        ],
        device_id: deviceB,
      });
      const succeeded = response.succeeded ?? [];
      const failed = response.failed ?? [];
      checkEqual(
        'PublishSessionMetrics succeeded for the two finite values',
        succeeded.map((m) => [m.name, m.value]).sort(),
        [
          ['node.battery_min_pct', 41],
          ['node.max_altitude_m', 120.5],
        ],
      );
      check(
        'PublishSessionMetrics: values carry mt_ ids, the explicit device and the session bounds',
        succeeded.every(
          (m) =>
            m.metric_id?.startsWith('mt_') &&
            m.session_id === sessionId &&
            m.device_id === deviceB &&
            m.min_timestamp_ns === ts(100) &&
            m.max_timestamp_ns === ts(5600),
        ),
        () => show(succeeded),
      );
      checkEqual(
        'PublishSessionMetrics: the NaN entry failed on its own, by index',
        failed.map((f) => [f.index ?? 0, f.entry?.name]),
        [[2, 'node.not_a_number']],
      );
    });

    // A deliberate INVALID_ARGUMENT with rich details: a half-open window.
    const { rich } = await expectError(
      statusRoot,
      'AddSessionFiles with only range_min_timestamp_ns',
      unary(sessions, 'AddSessionFiles', {
        session_id: sessionId,
        files: [{ file_id: files.f1.file_id, range_min_timestamp_ns: ts(100) }],
      }),
      grpc.status.INVALID_ARGUMENT,
    );
    check('grpc-status-details-bin decodes to a google.rpc.Status', rich !== null);
    checkEqual('google.rpc.Status.code is INVALID_ARGUMENT', rich.code, grpc.status.INVALID_ARGUMENT);
    const info = errorInfo(rich);
    checkEqual(
      'ErrorInfo domain and reason',
      [info?.domain, info?.reason],
      ['flightlog', 'INVALID_REQUEST'],
    );
    const violations = badRequest(rich)?.field_violations ?? [];
    check(
      'BadRequest has a field violation under files[0]',
      violations.some((v) => v.field.startsWith('files[0]')),
      () => show(rich.details),
    );
    await step('GetSession after the rejected call', async () => {
      const { session: unchanged } = await unary(sessions, 'GetSession', { session_id: sessionId });
      checkEqual(
        'the rejected AddSessionFiles changed nothing',
        [unchanged.min_timestamp_ns, unchanged.max_timestamp_ns],
        [ts(100), ts(5600)],
      );
    });

    // Delete, then the session is gone.
    await step('DeleteSession', async () => {
      await unary(sessions, 'DeleteSession', { session_id: sessionId });
      pass('DeleteSession');
    });
    const gone = await expectError(
      statusRoot,
      'GetSession after DeleteSession',
      unary(sessions, 'GetSession', { session_id: sessionId }),
      grpc.status.NOT_FOUND,
    );
    checkEqual(
      'NOT_FOUND carries ErrorInfo SESSION_NOT_FOUND',
      [errorInfo(gone.rich)?.domain, errorInfo(gone.rich)?.reason],
      ['flightlog', 'SESSION_NOT_FOUND'],
    );

    // Clean up the catalog entries this run made (datasets have no delete RPC).
    await step('cleanup', async () => {
      for (const key of Object.keys(files)) {
        await unary(catalog, 'DeleteFile', { file_id: files[key].file_id });
      }
      for (const deviceId of [deviceA, deviceB]) {
        await unary(catalog, 'DeleteDevice', { device_id: deviceId });
      }
      pass('DeleteFile x3 and DeleteDevice x2');
    });
  } finally {
    for (const client of clients) client.close();
  }
}

async function main() {
  const endpoint = requiredEnv('FLIGHTLOG_ENDPOINT');
  requiredEnv('FLIGHTLOG_API_KEY');
  const orgId = process.env.FLIGHTLOG_ORG_ID ?? '';
  const includeDirs = protoPathArgs();

  const statusRoot = loadStatusTypes(includeDirs);
  const { files, v1 } = loadContract(includeDirs);
  check(
    `loaded ${files.length} proto files from protos/ with proto-loader`,
    typeof v1?.SessionService === 'function' && typeof v1?.CatalogService === 'function',
  );

  const [target, credentials] = channelTarget(endpoint);
  await scenario(v1, statusRoot, target, credentials, orgId);
  console.log(`all ${checks} checks passed against ${endpoint}`);
}

try {
  await main();
  process.exit(0);
} catch (error) {
  if (!(error instanceof CheckFailed)) {
    console.log(`FAIL    unexpected error: ${error?.stack ?? error}`);
  }
  process.exit(1);
}
