//! Patches: small edits of a device's function table (`backends.1.weight`
//! set to 0, a deny rule appended to `rules`), applied by the caller to the
//! config it fetched from the device before sending it back.
//!
//! ```
//! use shmnet::functions::socket::manager::policy::{apply_patch, PatchOp};
//! let mut t: toml::Table = toml::from_str("backends = [{ weight = 1 }, { weight = 2 }]").unwrap();
//! apply_patch(&mut t, "backends.1.weight", PatchOp::Set, Some(&toml::Value::Integer(0))).unwrap();
//! assert_eq!(t["backends"][1]["weight"].as_integer(), Some(0));
//! ```

use std::fmt;

/// What a patch does at its path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PatchOp {
    /// Replace the value (or add the key to a table).
    Set,
    /// Push the value onto the array at the path (created when the key is
    /// missing from its table).
    Append,
    /// Remove the key or array element at the path.
    Remove,
}

impl fmt::Display for PatchOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PatchOp::Set => "set",
            PatchOp::Append => "append",
            PatchOp::Remove => "remove",
        })
    }
}

/// Where a walk through the config stands.
enum Node<'a> {
    Table(&'a mut toml::Table),
    Array(&'a mut Vec<toml::Value>),
}

fn node(v: &mut toml::Value) -> Option<Node<'_>> {
    match v {
        toml::Value::Table(t) => Some(Node::Table(t)),
        toml::Value::Array(a) => Some(Node::Array(a)),
        _ => None,
    }
}

/// An array index, refused when out of `0..len`.
fn index(seg: &str, at: &str, len: usize) -> Result<usize, String> {
    let i: usize = seg
        .parse()
        .map_err(|_| format!("at `{at}`: `{seg}` is not an array index"))?;
    if i < len {
        Ok(i)
    } else {
        Err(format!(
            "at `{at}`: index {i} out of range ({len} elements)"
        ))
    }
}

/// Applies `op` at `path` (segments split on `.`, numeric segments index
/// arrays) to `config`. `value` is needed by `set` and `append` and
/// ignored by `remove`. Missing intermediate keys are an error, not
/// created: a patch is meant to edit a config of a known shape. The error
/// names the path up to the failing segment.
pub fn apply_patch(
    config: &mut toml::Table,
    path: &str,
    op: PatchOp,
    value: Option<&toml::Value>,
) -> Result<(), String> {
    let segs: Vec<&str> = path.split('.').collect();
    if let Some(i) = segs.iter().position(|s| s.is_empty()) {
        return Err(format!("path `{path}`: segment {} is empty", i + 1));
    }
    let value = match (op, value) {
        (PatchOp::Remove, _) => None,
        (_, Some(v)) => Some(v.clone()),
        (_, None) => return Err(format!("op `{op}` needs a value")),
    };
    let Some((last, parents)) = segs.split_last() else {
        return Err("empty path".to_string());
    };
    let mut cur = Node::Table(config);
    let mut walked = 0;
    for seg in parents {
        walked += seg.len() + usize::from(walked > 0);
        let at = &path[..walked];
        let next = match cur {
            Node::Table(t) => t
                .get_mut(*seg)
                .ok_or_else(|| format!("at `{at}`: no such key"))?,
            Node::Array(a) => {
                let i = index(seg, at, a.len())?;
                &mut a[i]
            }
        };
        cur = node(next).ok_or_else(|| format!("at `{at}`: not a table or an array"))?;
    }
    let at = path;
    match (cur, op, value) {
        (Node::Table(t), PatchOp::Set, Some(v)) => {
            t.insert(last.to_string(), v);
        }
        (Node::Array(a), PatchOp::Set, Some(v)) => {
            let i = index(last, at, a.len())?;
            a[i] = v;
        }
        (Node::Table(t), PatchOp::Append, Some(v)) => {
            match t
                .entry(last.to_string())
                .or_insert_with(|| toml::Value::Array(Vec::new()))
            {
                toml::Value::Array(a) => a.push(v),
                _ => return Err(format!("at `{at}`: not an array")),
            }
        }
        (Node::Array(a), PatchOp::Append, Some(v)) => {
            let i = index(last, at, a.len())?;
            match &mut a[i] {
                toml::Value::Array(a) => a.push(v),
                _ => return Err(format!("at `{at}`: not an array")),
            }
        }
        (Node::Table(t), PatchOp::Remove, _) => {
            t.remove(*last)
                .ok_or_else(|| format!("at `{at}`: no such key"))?;
        }
        (Node::Array(a), PatchOp::Remove, _) => {
            let i = index(last, at, a.len())?;
            a.remove(i);
        }
        // `value` was checked above for set and append.
        (_, _, None) => return Err(format!("op `{op}` needs a value")),
    }
    Ok(())
}
