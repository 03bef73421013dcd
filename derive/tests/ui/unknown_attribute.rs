use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(tabel = "posts", key(id))]
struct Post {
    #[writebehind(rename = "post_title")]
    title: String,
    #[writebehind(countr)]
    views: i64,
}

fn main() {}
