<?php
// The seed's PHP backend flow, with its two functions exactly as the seed document gives them,
// pointed at push-serve. Usage:
//   php examples/backend.php access UID        prints the access key for UID (hand it to the page)
//   php examples/backend.php push UID          pushes the seed's info_update example to UID
// Environment: PUSH_SERVE_PASSWORD (required: the backends' password from conf.yaml),
// PUSH_HOST (default localhost:8080).

//场景， 会员资料更新后
function httpPostRaw($url, $data){
    $headers = array(
        "Content-type: application/json;charset='utf-8'"
    );
    $ch = curl_init($url);
    curl_setopt($ch, CURLOPT_TIMEOUT, 60); //设置超时
    $url = '这里为请求地址';
    if(0 === strpos(strtolower($url), 'https')) {
        curl_setopt($ch, CURLOPT_SSL_VERIFYPEER, 0); //对认证证书来源的检查
        curl_setopt($ch, CURLOPT_SSL_VERIFYHOST, 0); //从证书中检查SSL加密算法是否存在
    }
    curl_setopt($ch, CURLOPT_POST, TRUE);
    curl_setopt($ch, CURLOPT_POSTFIELDS, json_encode($data)); 
    curl_setopt($ch, CURLOPT_RETURNTRANSFER, TRUE); 
    curl_setopt($ch, CURLOPT_HTTPHEADER, $headers); 
    $rtn = curl_exec($ch);//CURLOPT_RETURNTRANSFER 不设置  curl_exec返回TRUE 设置  curl_exec返回json(此处) 失败都返回FALSE
    curl_close($ch);

    return $rtn;
}

$domain = getenv('PUSH_HOST') ?: 'localhost:8080';
$password = getenv('PUSH_SERVE_PASSWORD');
if ($password === false || $password === '') {
    fwrite(STDERR, "set PUSH_SERVE_PASSWORD to the password in push-serve's conf.yaml\n");
    exit(2);
}
$action = $argv[1] ?? '';
$uid = $argv[2] ?? '';
if ($uid === '' || !in_array($action, ['access', 'push'], true)) {
    fwrite(STDERR, "usage: php backend.php access|push UID\n");
    exit(2);
}

if ($action === 'access') {
    // The seed's /access sample, as written.
    $url = "http://{$domain}/access?uid={$uid}&password={$password}";
    $msg = json_decode(file_get_contents($url), true);
    if($msg['topic'] == "_access"){
        $access_key = $msg['contents'];
        echo $access_key, "\n";
        exit(0);
    }
    fwrite(STDERR, "no access key\n");
    exit(1);
}

// The seed's /push sample, as written.
$url = "http://{$domain}/push?uid={$uid}&password={$password}";
$data = [
    'topic' => "info_update",
    "contents" => [
        'name' => "张三",
        'age' => 17
    ]
];
echo httpPostRaw($url, $data), "\n";
