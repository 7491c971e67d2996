//! `antre users`, `antre permissions` and `antre vhosts`: the access model
//! from the command line, like `rabbitmqctl add_user`, `set_permissions`,
//! `add_vhost`, through the management API (so an administrator's
//! credentials are needed).

use std::io::Write;

use clap::Subcommand;
use serde_json::{json, Value};

use super::client::Client;
use super::listing::list;
use super::{done, vhost_path, Remote};
use crate::http::render::percent_encode;

/// `antre users ...`.
#[derive(Debug, Subcommand)]
pub enum UsersCommand {
    /// List users with their tags.
    List(Remote),
    /// Create a user (or replace one's password and tags).
    Add {
        /// User name.
        name: String,
        /// The user's password.
        #[arg(value_name = "PASSWORD", id = "new_password")]
        password: String,
        /// Tags, comma-separated: administrator, monitoring, policymaker,
        /// management [default: none, AMQP only].
        #[arg(long, default_value = "")]
        tags: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a user and their permissions, closing their connections.
    Delete {
        /// User name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Replace a user's tags (none given: no tags).
    SetTags {
        /// User name.
        name: String,
        /// The new tags.
        tags: Vec<String>,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change a user's password.
    ChangePassword {
        /// User name.
        name: String,
        /// The new password.
        #[arg(value_name = "NEW_PASSWORD", id = "new_password")]
        password: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre permissions ...` (in `--vhost`, default `/`).
#[derive(Debug, Subcommand)]
pub enum PermissionsCommand {
    /// List every user's permissions in every vhost.
    List(Remote),
    /// Set a user's permissions in --vhost: regular expressions over the
    /// names of queues and exchanges ("" matches nothing, ".*" everything).
    Set {
        /// User name.
        #[arg(value_name = "USER", id = "target_user")]
        user: String,
        /// Names the user may declare and delete.
        #[arg(long)]
        configure: String,
        /// Names the user may publish to and bind to.
        #[arg(long)]
        write: String,
        /// Names the user may consume from and bind from.
        #[arg(long)]
        read: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Remove a user's permissions in --vhost (they can no longer open it).
    Clear {
        /// User name.
        #[arg(value_name = "USER", id = "target_user")]
        user: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// `antre vhosts ...`.
#[derive(Debug, Subcommand)]
pub enum VhostsCommand {
    /// List vhosts.
    List(Remote),
    /// Create a vhost (the user creating it gets every permission in it).
    Add {
        /// Vhost name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a vhost with everything in it.
    Delete {
        /// Vhost name.
        name: String,
        #[command(flatten)]
        remote: Remote,
    },
}

fn user_path(name: &str) -> String {
    format!("/api/users/{}", percent_encode(name))
}

/// Runs `antre users ...`.
pub fn users(cmd: UsersCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        UsersCommand::List(r) => {
            let columns = [("name", "/name"), ("tags", "/tags")];
            list(&r, "/api/users", &columns, out)
        }
        UsersCommand::Add {
            name,
            password,
            tags,
            remote,
        } => {
            let body = json!({ "password": password, "tags": tags });
            Client::new(&remote).send("PUT", &user_path(&name), Some(body))?;
            done(&remote, out, format!("user '{name}' added"))
        }
        UsersCommand::Delete { name, remote } => {
            Client::new(&remote).send("DELETE", &user_path(&name), None)?;
            done(&remote, out, format!("user '{name}' deleted"))
        }
        UsersCommand::SetTags { name, tags, remote } => {
            let client = Client::new(&remote);
            let mut user = client.get(&user_path(&name))?;
            // Keep the password: send its hash back with the new tags.
            user["tags"] = json!(tags.join(","));
            client.send("PUT", &user_path(&name), Some(keep_fields(user)))?;
            done(
                &remote,
                out,
                format!("tags of '{name}' set to [{}]", tags.join(", ")),
            )
        }
        UsersCommand::ChangePassword {
            name,
            password,
            remote,
        } => {
            let client = Client::new(&remote);
            let user = client.get(&user_path(&name))?;
            let body = json!({ "password": password, "tags": user["tags"] });
            client.send("PUT", &user_path(&name), Some(body))?;
            done(&remote, out, format!("password of '{name}' changed"))
        }
    }
}

/// A user as GET shows it, as PUT takes it back.
fn keep_fields(user: Value) -> Value {
    json!({
        "password_hash": user["password_hash"],
        "hashing_algorithm": user["hashing_algorithm"],
        "tags": user["tags"],
    })
}

/// Runs `antre permissions ...`.
pub fn permissions(cmd: PermissionsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        PermissionsCommand::List(r) => {
            let columns = [
                ("user", "/user"),
                ("vhost", "/vhost"),
                ("configure", "/configure"),
                ("write", "/write"),
                ("read", "/read"),
            ];
            list(&r, "/api/permissions", &columns, out)
        }
        PermissionsCommand::Set {
            user,
            configure,
            write,
            read,
            remote,
        } => {
            let path = format!(
                "/api/permissions/{}/{}",
                vhost_path(&remote),
                percent_encode(&user)
            );
            let body = json!({ "configure": configure, "write": write, "read": read });
            Client::new(&remote).send("PUT", &path, Some(body))?;
            let what = format!("permissions of '{user}' in vhost '{}' set", remote.vhost);
            done(&remote, out, what)
        }
        PermissionsCommand::Clear { user, remote } => {
            let path = format!(
                "/api/permissions/{}/{}",
                vhost_path(&remote),
                percent_encode(&user)
            );
            Client::new(&remote).send("DELETE", &path, None)?;
            let what = format!(
                "permissions of '{user}' in vhost '{}' cleared",
                remote.vhost
            );
            done(&remote, out, what)
        }
    }
}

/// Runs `antre vhosts ...`.
pub fn vhosts(cmd: VhostsCommand, out: &mut dyn Write) -> anyhow::Result<()> {
    match cmd {
        VhostsCommand::List(r) => {
            let columns = [
                ("name", "/name"),
                ("messages", "/messages"),
                ("connections", "/connections"),
            ];
            list(&r, "/api/vhosts", &columns, out)
        }
        VhostsCommand::Add { name, remote } => {
            let path = format!("/api/vhosts/{}", percent_encode(&name));
            Client::new(&remote).send("PUT", &path, None)?;
            done(&remote, out, format!("vhost '{name}' added"))
        }
        VhostsCommand::Delete { name, remote } => {
            let path = format!("/api/vhosts/{}", percent_encode(&name));
            Client::new(&remote).send("DELETE", &path, None)?;
            done(&remote, out, format!("vhost '{name}' deleted"))
        }
    }
}
