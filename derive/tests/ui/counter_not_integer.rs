use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts", key(id))]
struct Post {
    #[writebehind(counter)]
    title: String,
    #[writebehind(counter)]
    score: f64,
    #[writebehind(counter)]
    likes: Option<i64>,
}

fn main() {}
