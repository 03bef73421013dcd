use writebehind::Record;

#[derive(Clone, serde::Serialize, serde::Deserialize, Record)]
#[writebehind(table = "posts")]
struct Post {
    title: String,
}

fn main() {}
