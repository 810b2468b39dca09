//! MongoDB command files (`*.mongo.json`): a JSON array of commands, each an object with one
//! key naming the command:
//!
//! ```json
//! [
//!   {"create_collection": "users"},
//!   {"create_index": {"collection": "users", "keys": {"email": 1}, "name": "users_email", "unique": true}},
//!   {"update_many": {"collection": "users", "filter": {}, "update": {"$set": {"active": true}}}},
//!   {"rename_field": {"collection": "users", "from": "mail", "to": "email"}},
//!   {"drop_index": {"collection": "users", "name": "users_email"}},
//!   {"drop_collection": "users"}
//! ]
//! ```

use serde_json::{json, Map, Value};

/// One command of a MongoDB migration file.
#[derive(Clone, Debug, PartialEq)]
pub enum MongoCommand {
    CreateCollection {
        name: String,
        options: Map<String, Value>,
    },
    DropCollection {
        name: String,
    },
    CreateIndex {
        collection: String,
        keys: Map<String, Value>,
        name: String,
        unique: bool,
    },
    DropIndex {
        collection: String,
        name: String,
    },
    UpdateMany {
        collection: String,
        filter: Map<String, Value>,
        update: Value,
    },
    RenameField {
        collection: String,
        from: String,
        to: String,
    },
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct MongoScript {
    pub commands: Vec<MongoCommand>,
}

/// A database command as ordered (name, value) pairs: MongoDB reads the first key as the
/// command name, so the order must survive whatever map type the driver uses.
pub type CommandDoc = Vec<(String, Value)>;

fn str_field(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<String, String> {
    match obj.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        _ => Err(format!("{ctx}: `{key}` must be a non-empty string")),
    }
}

fn obj_field(obj: &Map<String, Value>, key: &str, ctx: &str) -> Result<Map<String, Value>, String> {
    match obj.get(key) {
        Some(Value::Object(m)) => Ok(m.clone()),
        None => Ok(Map::new()),
        _ => Err(format!("{ctx}: `{key}` must be an object")),
    }
}

fn check_keys(obj: &Map<String, Value>, allowed: &[&str], ctx: &str) -> Result<(), String> {
    for k in obj.keys() {
        if !allowed.contains(&k.as_str()) {
            return Err(format!(
                "{ctx}: unknown key `{k}` (allowed: {})",
                allowed.join(", ")
            ));
        }
    }
    Ok(())
}

impl MongoScript {
    /// Parses and checks a command file; the error names the command and what is wrong.
    pub fn from_json(v: &Value) -> Result<MongoScript, String> {
        let items = match v {
            Value::Array(a) => a,
            _ => return Err("a MongoDB migration file is a JSON array of commands".into()),
        };
        let mut commands = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let ctx = format!("command #{}", i + 1);
            let Value::Object(o) = item else {
                return Err(format!("{ctx}: must be an object with one key"));
            };
            if o.len() != 1 {
                return Err(format!(
                    "{ctx}: must have exactly one key (the command name)"
                ));
            }
            let Some((name, arg)) = o.iter().next() else {
                return Err(format!("{ctx}: empty"));
            };
            let ctx = format!("{ctx} ({name})");
            let cmd = match (name.as_str(), arg) {
                ("create_collection", Value::String(n)) if !n.is_empty() => {
                    MongoCommand::CreateCollection {
                        name: n.clone(),
                        options: Map::new(),
                    }
                }
                ("create_collection", Value::Object(a)) => {
                    check_keys(a, &["name", "options"], &ctx)?;
                    MongoCommand::CreateCollection {
                        name: str_field(a, "name", &ctx)?,
                        options: obj_field(a, "options", &ctx)?,
                    }
                }
                ("drop_collection", Value::String(n)) if !n.is_empty() => {
                    MongoCommand::DropCollection { name: n.clone() }
                }
                ("create_index", Value::Object(a)) => {
                    check_keys(a, &["collection", "keys", "name", "unique"], &ctx)?;
                    let keys = obj_field(a, "keys", &ctx)?;
                    if keys.is_empty() {
                        return Err(format!("{ctx}: `keys` must name at least one field"));
                    }
                    let unique = match a.get("unique") {
                        None => false,
                        Some(Value::Bool(b)) => *b,
                        Some(_) => return Err(format!("{ctx}: `unique` must be true or false")),
                    };
                    MongoCommand::CreateIndex {
                        collection: str_field(a, "collection", &ctx)?,
                        keys,
                        name: str_field(a, "name", &ctx)?,
                        unique,
                    }
                }
                ("drop_index", Value::Object(a)) => {
                    check_keys(a, &["collection", "name"], &ctx)?;
                    MongoCommand::DropIndex {
                        collection: str_field(a, "collection", &ctx)?,
                        name: str_field(a, "name", &ctx)?,
                    }
                }
                ("update_many", Value::Object(a)) => {
                    check_keys(a, &["collection", "filter", "update"], &ctx)?;
                    let update = match a.get("update") {
                        Some(u @ Value::Object(m)) if !m.is_empty() => u.clone(),
                        Some(u @ Value::Array(p)) if !p.is_empty() => u.clone(),
                        _ => {
                            return Err(format!(
                                "{ctx}: `update` must be an update document or a pipeline"
                            ))
                        }
                    };
                    MongoCommand::UpdateMany {
                        collection: str_field(a, "collection", &ctx)?,
                        filter: obj_field(a, "filter", &ctx)?,
                        update,
                    }
                }
                ("rename_field", Value::Object(a)) => {
                    check_keys(a, &["collection", "from", "to"], &ctx)?;
                    MongoCommand::RenameField {
                        collection: str_field(a, "collection", &ctx)?,
                        from: str_field(a, "from", &ctx)?,
                        to: str_field(a, "to", &ctx)?,
                    }
                }
                (
                    "create_collection" | "drop_collection" | "create_index" | "drop_index"
                    | "update_many" | "rename_field",
                    _,
                ) => return Err(format!("{ctx}: wrong argument shape")),
                _ => return Err(format!(
                    "{ctx}: unknown command (known: create_collection, drop_collection, create_index, drop_index, update_many, rename_field)"
                )),
            };
            commands.push(cmd);
        }
        Ok(MongoScript { commands })
    }
}

impl MongoCommand {
    /// The database command that carries this out, in `runCommand` form.
    pub fn to_command(&self) -> CommandDoc {
        let s = |x: &str| Value::String(x.to_owned());
        match self {
            MongoCommand::CreateCollection { name, options } => {
                let mut d = vec![("create".to_owned(), s(name))];
                d.extend(options.iter().map(|(k, v)| (k.clone(), v.clone())));
                d
            }
            MongoCommand::DropCollection { name } => vec![("drop".to_owned(), s(name))],
            MongoCommand::CreateIndex {
                collection,
                keys,
                name,
                unique,
            } => vec![
                ("createIndexes".to_owned(), s(collection)),
                (
                    "indexes".to_owned(),
                    json!([{"key": Value::Object(keys.clone()), "name": name, "unique": unique}]),
                ),
            ],
            MongoCommand::DropIndex { collection, name } => vec![
                ("dropIndexes".to_owned(), s(collection)),
                ("index".to_owned(), s(name)),
            ],
            MongoCommand::UpdateMany {
                collection,
                filter,
                update,
            } => vec![
                ("update".to_owned(), s(collection)),
                (
                    "updates".to_owned(),
                    json!([{"q": Value::Object(filter.clone()), "u": update, "multi": true}]),
                ),
            ],
            MongoCommand::RenameField {
                collection,
                from,
                to,
            } => vec![
                ("update".to_owned(), s(collection)),
                (
                    "updates".to_owned(),
                    json!([{"q": {from.clone(): {"$exists": true}}, "u": {"$rename": {from.clone(): to}}, "multi": true}]),
                ),
            ],
        }
    }

    /// One line for dry runs and logs.
    pub fn describe(&self) -> String {
        match self {
            MongoCommand::CreateCollection { name, .. } => format!("create collection {name}"),
            MongoCommand::DropCollection { name } => format!("drop collection {name}"),
            MongoCommand::CreateIndex {
                collection, name, ..
            } => format!("create index {name} on {collection}"),
            MongoCommand::DropIndex { collection, name } => {
                format!("drop index {name} on {collection}")
            }
            MongoCommand::UpdateMany { collection, .. } => format!("update many in {collection}"),
            MongoCommand::RenameField {
                collection,
                from,
                to,
            } => format!("rename field {from} to {to} in {collection}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_and_map_to_database_commands() {
        let v: Value = serde_json::from_str(
            r#"[{"create_collection":"u"},
                {"create_index":{"collection":"u","keys":{"e":1},"name":"u_e","unique":true}},
                {"rename_field":{"collection":"u","from":"a","to":"b"}},
                {"update_many":{"collection":"u","filter":{"x":1},"update":{"$set":{"y":2}}}},
                {"drop_index":{"collection":"u","name":"u_e"}},
                {"drop_collection":"u"}]"#,
        )
        .unwrap();
        let s = MongoScript::from_json(&v).unwrap();
        assert_eq!(s.commands.len(), 6);
        assert_eq!(s.commands[0].to_command()[0].0, "create");
        assert_eq!(s.commands[1].to_command()[0].0, "createIndexes");
        let rn = s.commands[2].to_command();
        assert_eq!(rn[1].1[0]["u"]["$rename"]["a"], "b");
    }

    #[test]
    fn bad_commands_are_named() {
        for bad in [
            r#"{"create_collection":"u"}"#,
            r#"[{"create_collection":""}]"#,
            r#"[{"drop_table":"u"}]"#,
            r#"[{"create_index":{"collection":"u","keys":{},"name":"i"}}]"#,
            r#"[{"update_many":{"collection":"u","update":{}}}]"#,
            r#"[{"rename_field":{"collection":"u","from":"a"}}]"#,
            r#"[{"create_collection":"u","drop_collection":"v"}]"#,
            r#"[{"drop_index":{"collection":"u","name":"i","extra":1}}]"#,
        ] {
            let v: Value = serde_json::from_str(bad).unwrap();
            assert!(MongoScript::from_json(&v).is_err(), "{bad}");
        }
    }
}
