//! Tables for people.

use serde_json::Value;

fn cell(v: &Value) -> String {
    match v {
        Value::Null => "NULL".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Left-aligned columns separated by two spaces.
fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<w$}", w = widths[i]))
            .collect::<Vec<_>>()
            .join("  ");
        s.truncate(s.trim_end().len());
        s + "\n"
    };
    let mut out = line(headers.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out += &line(row.clone());
    }
    out
}

/// `credswap status`.
pub fn status_table(v: &Value) -> String {
    let rows: Vec<Vec<String>> = v["targets"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .map(|t| {
                    let g = &t["generation"];
                    let pool = &t["pool"];
                    let last = &t["last_rotation"];
                    vec![
                        cell(&t["name"]),
                        cell(&t["state"]),
                        if g.is_null() {
                            "-".into()
                        } else {
                            format!("g{}", g["id"])
                        },
                        if g.is_null() {
                            "-".into()
                        } else {
                            cell(&g["username"])
                        },
                        format!("{}/{}/{}", pool["in_use"], pool["idle"], pool["max_size"]),
                        format!(
                            "{}/{}",
                            pool["postgres_sessions"], pool["postgres_idle_servers"]
                        ),
                        if last.is_null() {
                            "-".into()
                        } else {
                            format!(
                                "{} {} {}",
                                cell(&last["result"]),
                                cell(&last["trigger"]),
                                cell(&last["started_at"])
                            )
                        },
                        cell(&t["breaker"]),
                        t["reason"].as_str().unwrap_or("").to_string(),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
    table(
        &[
            "TARGET",
            "STATE",
            "GEN",
            "USER",
            "POOL use/idle/max",
            "WIRE sess/kept",
            "LAST ROTATION",
            "BREAKER",
            "REASON",
        ],
        &rows,
    )
}

/// `credswap status`, second part: every host of every target's live generation, what it was
/// last seen to be and how many of the generation's server connections are on it.
pub fn hosts_table(v: &Value) -> String {
    let mut rows = Vec::new();
    for t in v["targets"].as_array().into_iter().flatten() {
        for h in t["pool"]["hosts"].as_array().into_iter().flatten() {
            let role = match (&h["role"], h["read_only"].as_bool()) {
                (Value::Null, _) => "-".to_string(),
                (role, Some(true)) => format!("{} (read-only)", cell(role)),
                (role, _) => cell(role),
            };
            rows.push(vec![
                cell(&t["name"]),
                cell(&h["host"]),
                role,
                cell(&h["connections"]),
                if h["down"] == true { "yes" } else { "no" }.to_string(),
                h["last_error"].as_str().unwrap_or("-").to_string(),
            ]);
        }
    }
    if rows.is_empty() {
        return String::new();
    }
    table(
        &["TARGET", "HOST", "ROLE", "CONNS", "DOWN", "LAST ERROR"],
        &rows,
    )
}

/// `credswap query`.
pub fn query_table(v: &Value) -> String {
    let headers: Vec<String> = v["columns"]
        .as_array()
        .map(|cs| cs.iter().map(|c| cell(&c["name"])).collect())
        .unwrap_or_default();
    let rows: Vec<Vec<String>> = v["rows"]
        .as_array()
        .map(|rs| {
            rs.iter()
                .map(|r| {
                    r.as_array()
                        .map(|cells| cells.iter().map(cell).collect())
                        .unwrap_or_default()
                })
                .collect()
        })
        .unwrap_or_default();
    let mut out = if headers.is_empty() {
        String::new()
    } else {
        let refs: Vec<&str> = headers.iter().map(String::as_str).collect();
        table(&refs, &rows)
    };
    out += &format!(
        "({} {})\n",
        v["command"].as_str().unwrap_or(""),
        v["row_count"]
    );
    out
}
