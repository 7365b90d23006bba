//! Micro-benchmarks of one push's CPU work: signature check, XML parse, normalization to JSON,
//! and safe-mode decryption. `cargo bench -p ingest`.

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use wechat::decrypt::AesKey;
use wechat::normalize::normalize;
use wechat::parse::Push;

const LOCATION: &str = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[oBenchUser0000000000000001]]></FromUserName>\
<CreateTime>1764144000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[LOCATION]]></Event>\
<Latitude>23.137466</Latitude><Longitude>113.352425</Longitude><Precision>119.385040</Precision></xml>";

const SUBSCRIBE: &str = "<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[oBenchUser0000000000000001]]></FromUserName>\
<CreateTime>1764144000</CreateTime><MsgType><![CDATA[event]]></MsgType><Event><![CDATA[subscribe]]></Event>\
<EventKey><![CDATA[qrscene_123123]]></EventKey><Ticket><![CDATA[TICKET]]></Ticket></xml>";

fn push(c: &mut Criterion) {
    let mut group = c.benchmark_group("push");
    group.throughput(Throughput::Elements(1));
    group.bench_function("signature_check", |b| {
        let signature = wechat::Signer::plaintext("token").signature("1764144000", "123456789");
        b.iter(|| {
            wechat::verify::check(&signature, &mut ["token", "1764144000", "123456789"]).unwrap()
        })
    });
    for (name, xml) in [("location", LOCATION), ("subscribe", SUBSCRIBE)] {
        group.bench_function(format!("parse/{name}"), |b| {
            b.iter(|| Push::try_from(xml.as_bytes()).unwrap())
        });
        group.bench_function(format!("parse_normalize_json/{name}"), |b| {
            b.iter(|| {
                let event = normalize(
                    Push::try_from(xml.as_bytes()).unwrap(),
                    "2026-11-26T08:00:00.000Z".into(),
                )
                .unwrap();
                serde_json::to_vec(&event).unwrap()
            })
        });
    }
    group.bench_function("sign_check_parse_normalize_json/location", |b| {
        let signature = wechat::Signer::plaintext("token").signature("1764144000", "123456789");
        b.iter(|| {
            wechat::verify::check(&signature, &mut ["token", "1764144000", "123456789"]).unwrap();
            let event = normalize(
                Push::try_from(LOCATION.as_bytes()).unwrap(),
                "2026-11-26T08:00:00.000Z".into(),
            )
            .unwrap();
            serde_json::to_vec(&event).unwrap()
        })
    });
    let key = AesKey::parse("abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG").unwrap();
    let encrypted = key.encrypt(LOCATION.as_bytes(), "wxbench", [7; 16]);
    group.bench_function("decrypt/location", |b| {
        b.iter_batched(
            || encrypted.clone(),
            |e| key.decrypt(&e, "wxbench").unwrap(),
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, push);
criterion_main!(benches);
