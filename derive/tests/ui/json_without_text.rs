use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "docs", key(id))]
struct Doc {
    body: serde_json::Value,
}

fn main() {}
