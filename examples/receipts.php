<?php
// A shop backend on push-serve's receipts, reports, rooms and JWT keys (README: "For users of
// other push services"). Plain PHP with curl, no library. Usage:
//   php examples/receipts.php jwt UID                   a JWT access key for UID's page (1 hour)
//   php examples/receipts.php push UID TOPIC JSON       push with a receipt; prints {id, sockets, expect_acks}
//   php examples/receipts.php wait ID ACKS [SECONDS]    waits until ACKS pages acked message ID;
//                                                       prints the report; exit 1 if they did not in time
//   php examples/receipts.php report ID                 prints the report (with the acking uids)
//   php examples/receipts.php rooms UID join|leave ROOM moves UID's open pages into or out of ROOM
// Environment: PUSH_SERVE_PASSWORD (required), PUSH_HOST (default localhost:8080),
// PUSH_JWT_SECRET (for `jwt`: the jwt_secret in push-serve's conf.yaml).

$host = getenv('PUSH_HOST') ?: 'localhost:8080';
$password = getenv('PUSH_SERVE_PASSWORD');
if ($password === false || $password === '') {
    fwrite(STDERR, "set PUSH_SERVE_PASSWORD to the password in push-serve's conf.yaml\n");
    exit(2);
}

/** Calls push-serve; returns [status, decoded JSON envelope, headers]. */
function call($method, $path, $body = null) {
    global $host, $password;
    $headers = [];
    $ch = curl_init("http://{$host}{$path}");
    curl_setopt_array($ch, [
        CURLOPT_CUSTOMREQUEST => $method,
        CURLOPT_RETURNTRANSFER => true,
        CURLOPT_TIMEOUT => 10,
        // The password as a Bearer token keeps it out of URLs and proxy logs.
        CURLOPT_HTTPHEADER => ["Authorization: Bearer {$password}", 'Content-Type: application/json'],
        CURLOPT_HEADERFUNCTION => function ($ch, $line) use (&$headers) {
            $parts = explode(':', $line, 2);
            if (count($parts) === 2) $headers[strtolower(trim($parts[0]))] = trim($parts[1]);
            return strlen($line);
        },
    ]);
    if ($body !== null) curl_setopt($ch, CURLOPT_POSTFIELDS, json_encode($body));
    $text = curl_exec($ch);
    $status = curl_getinfo($ch, CURLINFO_RESPONSE_CODE);
    curl_close($ch);
    if ($text === false) { fwrite(STDERR, "push-serve unreachable at {$host}\n"); exit(1); }
    return [$status, json_decode($text, true), $headers];
}

function b64url($bytes) { return rtrim(strtr(base64_encode($bytes), '+/', '-_'), '='); }

$args = array_slice($argv, 1);
switch ($args[0] ?? '') {
case 'jwt':
    // What any JWT library does for HS256; push-serve checks it with the same secret.
    $secret = getenv('PUSH_JWT_SECRET') ?: exit("set PUSH_JWT_SECRET\n");
    $head = b64url(json_encode(['alg' => 'HS256', 'typ' => 'JWT']));
    $claims = b64url(json_encode(['uid' => $args[1], 'exp' => time() + 3600]));
    echo "$head.$claims." . b64url(hash_hmac('sha256', "$head.$claims", $secret, true)), "\n";
    break;
case 'push':
    [$status, $reply, $headers] = call('POST', '/push?uid=' . urlencode($args[1]),
        ['topic' => $args[2], 'contents' => json_decode($args[3]), 'receipt' => true]);
    if ($status === 404) {
        // Nobody of that uid is online: the report still says so, under this id.
        echo json_encode(['id' => $headers['x-push-id'] ?? null, 'sockets' => 0, 'expect_acks' => 0]), "\n";
        break;
    }
    if ($status !== 200) { fwrite(STDERR, json_encode($reply) . "\n"); exit(1); }
    echo json_encode($reply['contents']), "\n";
    break;
case 'wait':
    $deadline = microtime(true) + (float)($args[3] ?? 10);
    do {
        [$status, $reply] = call('GET', '/report/push/' . urlencode($args[1]) . '?uids=1');
        if ($status !== 200) { fwrite(STDERR, json_encode($reply) . "\n"); exit(1); }
        if ($reply['contents']['acks'] >= (int)$args[2]) { echo json_encode($reply['contents']), "\n"; exit(0); }
        usleep(100000);
    } while (microtime(true) < $deadline);
    echo json_encode($reply['contents']), "\n";
    exit(1);
case 'report':
    [$status, $reply] = call('GET', '/report/push/' . urlencode($args[1]) . '?uids=1');
    echo json_encode($reply), "\n";
    exit($status === 200 ? 0 : 1);
case 'rooms':
    [$status, $reply] = call('POST', '/rooms?uid=' . urlencode($args[1]), [$args[2] => [$args[3]]]);
    echo json_encode($reply), "\n";
    exit($status === 200 ? 0 : 1);
default:
    fwrite(STDERR, "usage: php receipts.php jwt|push|wait|report|rooms …\n");
    exit(2);
}
