use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize)]
struct Tags(Vec<String>);

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts", key(id))]
struct Post {
    title: String,
    tags: Tags,
    views: u64,
}

fn main() {}
