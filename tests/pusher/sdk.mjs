// push-serve's Pusher-compatible mode driven by the real libraries: pusher-js (its Node build),
// laravel-echo and the `pusher` server SDK. Run by tests/pusher.rs:
//   node sdk.mjs <host:port> [<host:port of a second node>]
// With a second node (a cluster on one Redis), clients connect to it while the server SDK
// triggers on the first, and presence is checked across both.
// Prints "ok: <step>" per step and "pusher sdk: ok" at the end; exits 1 on the first failure.

import PusherJS from 'pusher-js';
import Echo from 'laravel-echo';
import Pusher from 'pusher';
import crypto from 'node:crypto';

const [first, second] = process.argv.slice(2);
const [HOST, PORT] = first.split(':');
const [HOST2, PORT2] = (second ?? first).split(':');
const APP = { appId: '1001', key: 'app-key', secret: 'app-secret' };
const MASTER_KEY = crypto.randomBytes(32).toString('base64');
const PATIENCE = 10000;

const server = new Pusher({
  ...APP,
  host: HOST,
  port: PORT,
  useTLS: false,
  encryptionMasterKeyBase64: MASTER_KEY,
});

function step(name) {
  console.log(`ok: ${name}`);
}

function fail(why) {
  console.error(`FAILED: ${why}`);
  process.exit(1);
}

function assert(cond, why) {
  if (!cond) fail(why);
}

function timeout(promise, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`timed out waiting for ${what}`)), PATIENCE);
    }),
  ]).finally(() => clearTimeout(timer));
}

/// Resolves with the next `event` on `target` (a channel, a connection, pusher.user).
function next(target, event) {
  return timeout(
    new Promise((resolve) => {
      const handler = (data, meta) => {
        target.unbind(event, handler);
        resolve(data ?? meta);
      };
      target.bind(event, handler);
    }),
    event,
  );
}

/// Collects every event on a channel, in order.
function recorder(channel) {
  const seen = [];
  channel.bind_global((event, data) => {
    if (!event.startsWith('pusher')) seen.push({ event, data });
  });
  return seen;
}

async function until(check, what) {
  const deadline = Date.now() + PATIENCE;
  while (!check()) {
    if (Date.now() > deadline) fail(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/// A pusher-js client on the second node (the first when there is one), authorizing with the
/// server SDK as an app's auth endpoint would; `user` is its presence and sign-in identity.
function client({ key = APP.key, user = null, forge = false, node = 2 } = {}) {
  const [host, port] = node === 2 ? [HOST2, PORT2] : [HOST, PORT];
  return new PusherJS(key, {
    wsHost: host,
    wsPort: Number(port),
    forceTLS: false,
    enabledTransports: ['ws'],
    cluster: 'ignored',
    disableStats: true,
    channelAuthorization: {
      customHandler: ({ socketId, channelName }, callback) => {
        const presence = channelName.startsWith('presence-')
          ? { user_id: user.id, user_info: { name: user.name } }
          : undefined;
        const auth = server.authorizeChannel(socketId, channelName, presence);
        if (forge) auth.auth = `${APP.key}:${'0'.repeat(64)}`;
        callback(null, auth);
      },
    },
    userAuthentication: {
      customHandler: ({ socketId }, callback) => {
        const auth = server.authenticateUser(socketId, { id: user.id, name: user.name });
        if (forge) auth.auth = `${APP.key}:${'0'.repeat(64)}`;
        callback(null, auth);
      },
    },
  });
}

async function connected(p) {
  if (p.connection.state !== 'connected') await next(p.connection, 'connected');
  return p;
}

async function subscribed(p, name) {
  const channel = p.subscribe(name);
  await next(channel, 'pusher:subscription_succeeded');
  return channel;
}

const opened = [];
function track(p) {
  opened.push(p);
  return p;
}

async function main() {
  // Connection: socket_id as \d+.\d+.
  const a = track(await connected(track(client({ user: { id: 'u1', name: 'Ann' } }))));
  const b = track(await connected(client({ user: { id: 'u2', name: 'Bob' } })));
  assert(/^\d+\.\d+$/.test(a.connection.socket_id), `socket_id ${a.connection.socket_id}`);
  step('pusher-js connects (socket_id ' + a.connection.socket_id + ')');

  // Public channel: a trigger through the server SDK reaches every subscriber.
  const pubA = await subscribed(a, 'orders');
  const pubB = await subscribed(b, 'orders');
  const gotA = recorder(pubA);
  const gotB = recorder(pubB);
  await server.trigger('orders', 'shipped', { id: 7, note: 'ü' });
  await until(() => gotA.length === 1 && gotB.length === 1, 'the public event');
  assert(gotA[0].data.id === 7 && gotA[0].data.note === 'ü', JSON.stringify(gotA[0]));
  step('public channel: server SDK trigger reaches every subscriber');

  // socket_id exclusion: the excluded socket never gets it; the next event proves it.
  await server.trigger('orders', 'only-others', { n: 1 }, { socket_id: a.connection.socket_id });
  await server.trigger('orders', 'marker', { n: 2 });
  await until(() => gotA.length === 2 && gotB.length === 3, 'the marker');
  assert(gotA[1].event === 'marker', 'the excluded socket got ' + gotA[1].event);
  assert(gotB[1].event === 'only-others' && gotB[2].event === 'marker', 'order on b');
  step('socket_id exclusion');

  // Up to 100 channels in one trigger.
  const many = Array.from({ length: 100 }, (_, i) => `many-${i}`);
  const last = await subscribed(b, 'many-99');
  const gotLast = recorder(last);
  await server.trigger(many, 'wide', 'x');
  await until(() => gotLast.length === 1, 'the 100-channel trigger');
  try {
    await server.trigger([...many, 'many-100'], 'too-wide', 'x');
    fail('101 channels were accepted');
  } catch (e) {
    assert(/100/.test(e.message) || e.status === 400, 'refusal of 101 channels: ' + e);
  }
  step('trigger to 100 channels; 101 refused');

  // Private channel: signed auth works, a forged one is refused.
  const privA = await subscribed(a, 'private-orders');
  const privB = await subscribed(b, 'private-orders');
  const forger = track(await connected(client({ forge: true, user: { id: 'x', name: 'X' } })));
  const forged = forger.subscribe('private-orders');
  const refusal = await next(forged, 'pusher:subscription_error');
  assert(refusal.status === 401, 'forged auth: ' + JSON.stringify(refusal));
  step('private channel: signed auth subscribes, forged auth is refused');

  // Client events: to the others on a private channel, never echoed to the sender.
  const privGotA = recorder(privA);
  const privGotB = recorder(privB);
  assert(privA.trigger('client-typing', { who: 'a' }), 'client event not sent');
  await until(() => privGotB.length === 1, 'the client event');
  assert(privGotB[0].data.who === 'a', JSON.stringify(privGotB[0]));
  await server.trigger('private-orders', 'marker', {});
  await until(() => privGotA.length === 1, 'the marker on private-orders');
  assert(privGotA[0].event === 'marker', 'the sender got its own client event');
  step('client events reach the others, never the sender');

  // ... and are refused on public channels.
  const refused = next(a.connection, 'error');
  a.send_event('client-nope', { x: 1 }, 'orders');
  const err = await refused;
  assert(/private|presence/.test(JSON.stringify(err)), 'public client event: ' + JSON.stringify(err));
  step('client events on a public channel are refused');

  // Rate limit: a burst past client_events_per_second gets 4301.
  const limited = next(a.connection, 'error');
  for (let i = 0; i < 30; i++) privA.trigger('client-burst', { i });
  const limit = await limited;
  assert(JSON.stringify(limit).includes('4301'), 'rate limit: ' + JSON.stringify(limit));
  step('client events are rate-limited per socket (4301)');

  // Presence: members with user_info; one member per user_id however many sockets.
  const room = 'presence-room';
  const presA = await subscribed(a, room);
  assert(presA.members.count === 1 && presA.members.me.id === 'u1', 'presence me');
  const a2 = track(await connected(client({ user: { id: 'u1', name: 'Ann' }, node: 1 })));
  await subscribed(a2, room);
  assert(presA.members.count === 1, 'a second socket of u1 made ' + presA.members.count);
  const added = next(presA, 'pusher:member_added');
  const presB = await subscribed(b, room);
  const member = await added;
  assert(member.id === 'u2' && member.info.name === 'Bob', 'member_added ' + JSON.stringify(member));
  assert(presB.members.count === 2, 'members seen by b: ' + presB.members.count);
  assert(presB.members.get('u1').info.name === 'Ann', 'user_info of u1');
  const users = await (await server.get({ path: `/channels/${room}/users` })).json();
  assert(users.users.map((u) => u.id).sort().join() === 'u1,u2', JSON.stringify(users));
  const info = await (
    await server.get({ path: '/channels', params: { filter_by_prefix: 'presence-', info: 'user_count' } })
  ).json();
  assert(info.channels[room].user_count === 2, 'user_count: ' + JSON.stringify(info));
  const one = await (await server.get({ path: `/channels/${room}` })).json();
  assert(one.occupied === true && one.user_count === 2 && one.subscription_count === 3, JSON.stringify(one));
  // u1 closing one of its two sockets removes nobody; b leaving removes u2.
  a2.disconnect();
  const removed = next(presA, 'pusher:member_removed');
  b.unsubscribe(room);
  const gone = await removed;
  assert(gone.id === 'u2', 'member_removed ' + JSON.stringify(gone));
  assert(presA.members.count === 1, 'members after leaves: ' + presA.members.count);
  step('presence: members, member_added/removed, one member per user, users and user_count');

  // Encrypted channels: relayed as the SDK encrypted them; pusher-js decrypts.
  const enc = await subscribed(a, 'private-encrypted-vault');
  const encGot = recorder(enc);
  await server.trigger('private-encrypted-vault', 'secret', { pin: 1234 });
  await until(() => encGot.length === 1, 'the encrypted event');
  assert(encGot[0].data.pin === 1234, 'decrypted ' + JSON.stringify(encGot[0]));
  const encRefused = next(a.connection, 'error');
  a.send_event('client-x', { y: 1 }, 'private-encrypted-vault');
  await encRefused;
  step('private-encrypted: relayed end to end, no client events');

  // Cache channels: cache_miss when empty, then the last event replayed.
  const miss = a.subscribe('cache-prices');
  await next(miss, 'pusher:cache_miss');
  await server.trigger('cache-prices', 'price', { eur: 1 });
  await server.trigger('cache-prices', 'price', { eur: 2 });
  const late = b.subscribe('cache-prices');
  const replayed = await next(late, 'price');
  assert(replayed.eur === 2, 'cache replay ' + JSON.stringify(replayed));
  step('cache channels: cache_miss, then the last event to a new subscriber');

  // User authentication: sendToUser reaches only that user's sockets.
  a.signin();
  b.signin();
  await Promise.all([a.user.signinDonePromise, b.user.signinDonePromise]);
  const forA = next(a.user, 'note');
  const bGot = [];
  b.user.bind('note', (d) => bGot.push(d));
  await server.sendToUser('u1', 'note', { hi: 1 });
  assert((await forA).hi === 1, 'sendToUser');
  const forB = next(b.user, 'note');
  await server.sendToUser('u2', 'note', { hi: 2 });
  assert((await forB).hi === 2 && bGot.length === 1, 'u2 got another user event');
  step('signin and sendToUser reach only that user');

  // A bad sign-in signature: 4009.
  const badUser = track(await connected(client({ forge: true, user: { id: 'u9', name: 'Eve' } })));
  const badErr = next(badUser.connection, 'error');
  badUser.signin();
  assert(JSON.stringify(await badErr).includes('4009'), 'forged signin');
  step('a forged sign-in is refused with 4009');

  // terminate_connections closes u1's sockets, nobody else's.
  const closed = timeout(
    new Promise((resolve) => a.connection.bind('state_change', (s) => s.current !== 'connected' && resolve(s))),
    'u1 terminated',
  );
  await server.terminateUserConnections('u1');
  await closed;
  await server.trigger('orders', 'still-here', {});
  await until(() => gotB.some((e) => e.event === 'still-here'), 'b still connected');
  step('terminate_connections closes that user only');

  // A wrong app key: 4001, and pusher-js does not retry.
  const stranger = track(client({ key: 'no-such-key' }));
  const unknown = await next(stranger.connection, 'error');
  assert(JSON.stringify(unknown).includes('4001'), 'wrong key ' + JSON.stringify(unknown));
  step('a wrong app key is refused with 4001');

  // The HTTP API's errors carry their real status.
  const wrong = new Pusher({ ...APP, secret: 'not-the-secret', host: HOST, port: PORT, useTLS: false });
  try {
    await wrong.trigger('orders', 'x', {});
    fail('a wrong secret was accepted');
  } catch (e) {
    assert(e.status === 401, 'wrong secret gave ' + e.status);
  }
  step('a wrong secret gets 401 from the HTTP API');

  // Laravel Echo over pusher-js, as a Laravel page configures it.
  const echo = new Echo({
    broadcaster: 'pusher',
    key: APP.key,
    wsHost: HOST2,
    wsPort: Number(PORT2),
    forceTLS: false,
    enabledTransports: ['ws', 'wss'],
    cluster: 'ignored',
    disableStats: true,
    Pusher: PusherJS,
    authorizer: (channel) => ({
      authorize: (socketId, callback) => {
        const presence = channel.name.startsWith('presence-')
          ? { user_id: 'e1', user_info: { name: 'Echo' } }
          : undefined;
        callback(null, server.authorizeChannel(socketId, channel.name, presence));
      },
    }),
  });
  opened.push(echo.connector.pusher);
  const shipped = new Promise((resolve) => echo.channel('shop').listen('.OrderShipped', resolve));
  const privately = new Promise((resolve) =>
    echo.private('user.5').listen('.Secret', resolve),
  );
  const here = new Promise((resolve) => echo.join('lobby').here(resolve));
  const members = await timeout(here, 'Echo join().here()');
  assert(members.length === 1 && members[0].name === 'Echo', 'here ' + JSON.stringify(members));
  await until(
    () => echo.connector.pusher.channel('private-user.5')?.subscribed && echo.connector.pusher.channel('shop')?.subscribed,
    'Echo subscriptions',
  );
  await server.trigger('shop', 'OrderShipped', { order: 1 });
  await server.trigger('private-user.5', 'Secret', { s: 1 });
  assert((await timeout(shipped, 'Echo public event')).order === 1, 'Echo public');
  assert((await timeout(privately, 'Echo private event')).s === 1, 'Echo private');
  step('Laravel Echo: channel().listen, private().listen, join().here');

  for (const p of opened) p.disconnect();
  console.log('pusher sdk: ok');
  process.exit(0);
}

main().catch((e) => fail(e.stack ?? String(e)));
