//! The durable image on the backing directory: loaded at mount, written back at
//! unmount.

use std::ffi::OsString;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use crate::model::{Kind, Model, ROOT};
use crate::{Error, Result};

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> Error + 'a {
    move |source| Error::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// Reads `backing` (created when absent) into a model where everything is durable.
pub(crate) fn load(backing: &Path) -> Result<Model> {
    std::fs::create_dir_all(backing).map_err(io("creating", backing))?;
    let meta = std::fs::metadata(backing).map_err(io("reading", backing))?;
    let mut model = Model::new((meta.mode() & 0o7777) as u16, meta.uid(), meta.gid());
    let mut todo = vec![(ROOT, backing.to_owned())];
    while let Some((dir, path)) = todo.pop() {
        for entry in std::fs::read_dir(&path).map_err(io("listing", &path))? {
            let entry = entry.map_err(io("listing", &path))?;
            let p = entry.path();
            let m = std::fs::symlink_metadata(&p).map_err(io("reading", &p))?;
            let mode = (m.mode() & 0o7777) as u16;
            let name: OsString = entry.file_name();
            if m.is_dir() {
                let node = Model::new_dir(mode, m.uid(), m.gid(), dir);
                let ino = model.load_node(dir, name, node);
                todo.push((ino, p));
            } else if m.is_file() {
                let data = std::fs::read(&p).map_err(io("reading", &p))?;
                model.load_node(dir, name, Model::new_file(mode, m.uid(), m.gid(), data));
            } else {
                return Err(Error::Unsupported(p));
            }
        }
    }
    Ok(model)
}

/// Replaces the content of `backing` with the model's durable image.
pub(crate) fn save(model: &Model, backing: &Path) -> Result<()> {
    for entry in std::fs::read_dir(backing).map_err(io("listing", backing))? {
        let p = entry.map_err(io("listing", backing))?.path();
        let r = if p.is_dir() {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        r.map_err(io("removing", &p))?;
    }
    // Parents come before their children (sorted paths), and a mode is set
    // after the content is written.
    let tree = model.durable_tree();
    for (rel, node) in &tree {
        let p = backing.join(rel);
        match &node.kind {
            Kind::Dir(_) => std::fs::create_dir(&p).map_err(io("creating", &p))?,
            Kind::File(f) => std::fs::write(&p, &f.durable).map_err(io("writing", &p))?,
        }
    }
    for (rel, node) in tree.iter().rev() {
        let p = backing.join(rel);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(u32::from(node.mode)))
            .map_err(io("chmod", &p))?;
    }
    Ok(())
}
