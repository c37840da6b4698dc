"""Writes the seed corpora in fuzz/seeds/<target>/ from the cases the test suite uses
(tests/webhook.rs, tests/api.rs, tests/config.rs, docs' TOML examples, the DSN tests).
Run by dev/fuzz; the seeds are committed so a run is reproducible."""
import json
import os
import re
import struct

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
ARN = "arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/billing-a1b2c3"


def write(target, items):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    for old in os.listdir(d):
        os.remove(os.path.join(d, old))
    for i, data in enumerate(items):
        with open(os.path.join(d, f"seed-{i:03}"), "wb") as f:
            f.write(data if isinstance(data, bytes) else data.encode())


webhook_bodies = [
    {"target": "app"},
    {"target": "app", "n": 2},
    {"secret_id": "prod/billing", "reason": "manual"},
    {"secret_id": ARN},
    {"version": "0", "detail-type": "Secret Label Updated", "source": "aws.secretsmanager",
     "resources": [ARN], "detail": {"name": "prod/billing", "labelUpdated": "AWSCURRENT"}},
    {"detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
     "detail": {"eventName": "PutSecretValue", "requestParameters": {"secretId": ARN}, "responseElements": {"arn": ARN}}},
    {"detail-type": "AWS API Call via CloudTrail", "source": "aws.secretsmanager",
     "detail": {"eventName": "RotateSecret", "requestParameters": None,
                "responseElements": {"aRN": "arn:aws:secretsmanager:us-west-2:123456789012:secret:prod/orders-AbCdEf"}}},
    {"detail-type": "AWS Service Event via CloudTrail", "source": "aws.secretsmanager",
     "detail": {"eventName": "RotationSucceeded", "additionalEventData": {"SecretId": ARN}}},
    {"source": "aws.secretsmanager", "detail": {"eventName": "GetSecretValue"}},
    {"vault_path": "database/creds/ro"},
    {"vault_path": "secret/data/app/db"},
    {"target": "app", "secret_id": "prod/billing"},
]
webhook = []
for i, b in enumerate(webhook_bodies):
    body = json.dumps(b)
    flags = i % 4  # bit 0: signed with the real key; bit 1: token in x-api-key
    webhook.append(bytes([flags]) + b"t=1800000000,v1=00ff\nBearer fuzz-token\n" + body.encode())
webhook.append(bytes([0]) + b"t=1800000000,v1=" + b"ab" * 32 + b",v1=zz\n\n{}")
write("webhook", webhook)

api = [
    {"sql": "SELECT 1"},
    {"sql": "SELECT $1::int4 + $2::int4", "params": [1, "two"]},
    {"sql": "SELECT $1::int4", "params": []},
    {"sql": "SELECT v FROM t WHERE id = $1", "params": [100], "timeout_ms": 500, "max_rows": 10},
    {"sql": "SELECT $1", "params": [None, True, 1.5, "2026-11-28T12:00:00Z", "1 day 02:00:00",
                                    "3fa85f64-5717-4562-b3fc-2c963f66afa6", "10.0.0.0/8", "aGVsbG8=",
                                    {"a": [1, 2]}, [1, 2, 3], [["a", None]], "-12345678901234567890.5e3",
                                    9223372036854775807, -32768, "NaN", "Infinity", "$1,000.00"],
     "row_format": "object"},
    {"statements": [{"sql": "INSERT INTO t VALUES (100, 'new')"},
                    {"sql": "SELECT v FROM t WHERE id = $1", "params": [100]}], "transaction": True},
    {"force": True, "wait": True},
]
write("api_body", [bytes([i * 7]) + json.dumps(b).encode() for i, b in enumerate(api)])

configs = [open(os.path.join(ROOT, "config", "credswap.example.toml")).read()]
for doc in ("configuration.md", "operations.md", "security.md"):
    text = open(os.path.join(ROOT, "docs", doc)).read()
    configs += re.findall(r"```toml\n(.*?)```", text, re.S)
configs.append('[api]\nsocket = 5\n[[target]]\nname = ""\nurl = "postgresql://u:pw@h/db"\n')
write("config", configs)

dsns = [
    "postgresql://db.internal:5432/app?sslmode=verify-full&sslrootcert=/etc/ssl/ca.pem",
    "postgres://h1:5432,h2:5433/app?target_session_attrs=read-write&connect_timeout=5",
    "postgresql://[::1]:5432/app?application_name=x&options=-c%20search_path%3Dapp",
    "postgresql:///app?host=/run/postgresql",
    "host=db.internal port=5432 dbname=app sslmode=require sslcert=/c.pem sslkey=/k.pem",
    "host='with space' dbname='it''s' sslrootcert=system",
    "postgresql://user:secret@h/db",
    "host=a,b port=1,2 target_session_attrs=any",
    "postgresql://h/db?sslmode=bogus",
]
write("dsn", dsns)


def pg_message(tag, body):
    return tag + struct.pack(">i", len(body) + 4) + body


def startup(params, version=196608):
    body = struct.pack(">i", version) + b"".join(k + b"\0" + v + b"\0" for k, v in params) + b"\0"
    return struct.pack(">i", len(body) + 4) + body


# pg_wire: the first byte is the read size the walker's stream is cut into.
pg = [
    startup([(b"user", b"app"), (b"database", b"app_rw")]),
    startup([(b"database", b"x"), (b"_pq_.opt", b"1")], 196610),
    struct.pack(">ii", 8, 80877103),
    struct.pack(">ii", 8, 80877104),
    struct.pack(">iiii", 16, 80877102, 7, 9),
    b"\x03" + pg_message(b"Q", b"SELECT 1\0") + pg_message(b"Z", b"I"),
    b"\x01" + pg_message(b"E", b"SERROR\0C42601\0Msyntax\0\0") + pg_message(b"Z", b"T"),
    b"\x07" + pg_message(b"D", b"\0\x01\0\0\0\x03abc") + pg_message(b"Z", b"E"),
]
write("pg_wire", pg)

batches = [
    {"statements": [{"sql": "SELECT 1"}]},
    {"statements": [{"sql": "INSERT INTO t VALUES ($1, $2)", "params": [1, "a"]},
                    {"sql": "SELECT * FROM t", "row_format": "object"}], "transaction": True, "timeout_ms": 500},
    {"statements": [{"sql": "BEGIN"}, {"sql": "SET search_path TO other"}], "transaction": False},
    {"statements": [{"sql": "-- c\n/* d */ SELECT set_config('a.b', 'c', false)"}, {"sql": "LISTEN x"}]},
    {"statements": [{"sql": "SELECT repeat('x', 12000000)"}] * 40},
]
write("api_batch", [json.dumps(b) for b in batches])

# Signature headers: flags byte, then the header (fuzz_targets/webhook_signature.rs).
signatures = [
    b"\x00t=1800000000,v1=00ff",
    b"\x03t=1800000000,v1=00,v1=11,v1=22,v1=33",
    b"\x01" + b"t=1800000000" + b",v1=00" * 200,
    b"\x02t=1799999000,v1=" + b"ab" * 32,
    b"\x00v1=" + b"ab" * 32 + b",t=1800000100,t=x",
    b"\x01t=,v1=,=,,,",
]
write("webhook_signature", signatures)
print("seeds written:", {t: len(os.listdir(os.path.join(HERE, 'seeds', t))) for t in os.listdir(os.path.join(HERE, 'seeds'))})
