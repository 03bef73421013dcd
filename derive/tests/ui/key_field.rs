use writebehind::Record;

// The key's value comes from the cache's key, the version is the cache's:
// neither is a field of the record.
#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts", key(id), version = "version")]
struct Post {
    id: i64,
    title: String,
    version: i64,
}

fn main() {}
