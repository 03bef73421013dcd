use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts", key(id), rename_all = "kebab-case")]
struct Post {
    like_count: i64,
}

fn main() {}
