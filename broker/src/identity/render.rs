//! The nats-server `authorization` block for a [`Registry`]: one nkey user
//! per identity with its [`Permissions`]. The output holds public keys and
//! subjects only. [`authorization_body`] is what the hub config generator
//! (`scheduler::nats_config::HubConfig::authorization`) takes;
//! [`authorization_block`] is a complete block to include by hand.

use std::fmt::Write as _;

use super::{Permissions, Registry};

fn list(out: &mut String, indent: &str, key: &str, items: &[String]) {
    let _ = writeln!(out, "{indent}{key}: {{");
    let _ = writeln!(out, "{indent}  allow: [");
    for (i, item) in items.iter().enumerate() {
        let comma = if i + 1 < items.len() { "," } else { "" };
        // Subjects never hold '"' or '\\' (the tag rules forbid them).
        let _ = writeln!(out, "{indent}    \"{item}\"{comma}");
    }
    let _ = writeln!(out, "{indent}  ]");
    let _ = writeln!(out, "{indent}}}");
}

/// `users = [ ... ]`, one entry per identity, in name order.
pub fn authorization_body(registry: &Registry) -> String {
    let mut out = String::from("users = [\n");
    let n = registry.identities.len();
    for (i, (name, entry)) in registry.identities.iter().enumerate() {
        let p = Permissions::for_role(entry.role, name);
        let _ = writeln!(out, "  # {name} ({})", entry.role);
        let _ = writeln!(out, "  {{");
        let _ = writeln!(out, "    nkey: \"{}\"", entry.public_key);
        let _ = writeln!(out, "    permissions: {{");
        list(&mut out, "      ", "publish", &p.publish);
        list(&mut out, "      ", "subscribe", &p.subscribe);
        let _ = writeln!(out, "      allow_responses: {}", p.allow_responses);
        let _ = writeln!(out, "    }}");
        let comma = if i + 1 < n { "," } else { "" };
        let _ = writeln!(out, "  }}{comma}");
    }
    out.push_str("]\n");
    out
}

/// `authorization { users = [ ... ] }`.
pub fn authorization_block(registry: &Registry) -> String {
    let mut out = String::from("authorization {\n");
    for line in authorization_body(registry).lines() {
        if line.is_empty() {
            out.push('\n');
        } else {
            let _ = writeln!(out, "  {line}");
        }
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{parse_name, Entry, Role};
    use crate::tag::TagSet;

    const KEY_A: &str = "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4";

    #[test]
    fn block_is_exact() {
        let mut reg = Registry::default();
        reg.add(
            parse_name("debby").unwrap(),
            Entry {
                role: Role::Worker,
                public_key: KEY_A.into(),
                capabilities: TagSet::parse_lists(["linux"]).unwrap(),
            },
        )
        .unwrap();
        reg.add(
            parse_name("watch").unwrap(),
            Entry {
                role: Role::Observer,
                public_key: KEY_A.into(),
                capabilities: TagSet::new(),
            },
        )
        .unwrap();
        let expected = r#"authorization {
  users = [
    # debby (worker)
    {
      nkey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
      permissions: {
        publish: {
          allow: [
            "colibri.presence.debby",
            "colibri.task.*.report.debby",
            "colibri.session.*.debby.>",
            "$JS.API.STREAM.INFO.COLIBRI_WORK",
            "$JS.API.STREAM.INFO.COLIBRI_INTAKE",
            "$JS.API.STREAM.INFO.COLIBRI_SESSIONS",
            "$JS.API.CONSUMER.CREATE.COLIBRI_WORK.worker-debby.colibri.work.debby",
            "$JS.API.CONSUMER.INFO.COLIBRI_WORK.worker-debby",
            "$JS.API.CONSUMER.MSG.NEXT.COLIBRI_WORK.worker-debby",
            "$JS.ACK.COLIBRI_WORK.worker-debby.>",
            "$O.colibri-transcripts.>",
            "$JS.API.STREAM.INFO.KV_colibri-config",
            "$JS.API.STREAM.MSG.GET.KV_colibri-config",
            "$JS.API.DIRECT.GET.KV_colibri-config",
            "$JS.API.DIRECT.GET.KV_colibri-config.>",
            "$JS.API.CONSUMER.CREATE.KV_colibri-config",
            "$JS.API.CONSUMER.CREATE.KV_colibri-config.>",
            "$JS.API.CONSUMER.INFO.KV_colibri-config.>",
            "$JS.API.CONSUMER.DELETE.KV_colibri-config.>",
            "$JS.API.CONSUMER.MSG.NEXT.KV_colibri-config.>",
            "$JS.API.STREAM.INFO.OBJ_colibri-transcripts",
            "$JS.API.STREAM.MSG.GET.OBJ_colibri-transcripts",
            "$JS.API.DIRECT.GET.OBJ_colibri-transcripts",
            "$JS.API.DIRECT.GET.OBJ_colibri-transcripts.>",
            "$JS.API.CONSUMER.CREATE.OBJ_colibri-transcripts",
            "$JS.API.CONSUMER.CREATE.OBJ_colibri-transcripts.>",
            "$JS.API.CONSUMER.INFO.OBJ_colibri-transcripts.>",
            "$JS.API.CONSUMER.DELETE.OBJ_colibri-transcripts.>",
            "$JS.API.CONSUMER.MSG.NEXT.OBJ_colibri-transcripts.>"
          ]
        }
        subscribe: {
          allow: [
            "_INBOX.debby.>"
          ]
        }
        allow_responses: true
      }
    },
    # watch (observer)
    {
      nkey: "UDXU4RCSJNZOIQHZNWXHXORDPRTGNJAHAHFRGZNEEJCPQTT2M7NLCNF4"
      permissions: {
        publish: {
          allow: [
            "colibri.api.list-tasks",
            "colibri.api.show-task",
            "colibri.api.status",
            "colibri.api.snapshot",
            "$JS.API.INFO",
            "$SRV.PING",
            "$SRV.PING.>",
            "$SRV.INFO",
            "$SRV.INFO.>",
            "$SRV.STATS",
            "$SRV.STATS.>",
            "$JS.API.STREAM.INFO.COLIBRI_EVENTS",
            "$JS.API.STREAM.MSG.GET.COLIBRI_EVENTS",
            "$JS.API.DIRECT.GET.COLIBRI_EVENTS",
            "$JS.API.DIRECT.GET.COLIBRI_EVENTS.>",
            "$JS.API.CONSUMER.CREATE.COLIBRI_EVENTS",
            "$JS.API.CONSUMER.CREATE.COLIBRI_EVENTS.>",
            "$JS.API.CONSUMER.INFO.COLIBRI_EVENTS.>",
            "$JS.API.CONSUMER.DELETE.COLIBRI_EVENTS.>",
            "$JS.API.CONSUMER.MSG.NEXT.COLIBRI_EVENTS.>",
            "$JS.API.STREAM.INFO.COLIBRI_SESSIONS",
            "$JS.API.STREAM.MSG.GET.COLIBRI_SESSIONS",
            "$JS.API.DIRECT.GET.COLIBRI_SESSIONS",
            "$JS.API.DIRECT.GET.COLIBRI_SESSIONS.>",
            "$JS.API.CONSUMER.CREATE.COLIBRI_SESSIONS",
            "$JS.API.CONSUMER.CREATE.COLIBRI_SESSIONS.>",
            "$JS.API.CONSUMER.INFO.COLIBRI_SESSIONS.>",
            "$JS.API.CONSUMER.DELETE.COLIBRI_SESSIONS.>",
            "$JS.API.CONSUMER.MSG.NEXT.COLIBRI_SESSIONS.>"
          ]
        }
        subscribe: {
          allow: [
            "colibri.task.*.state",
            "colibri.worker.*.state",
            "colibri.session.>",
            "_INBOX.watch.>"
          ]
        }
        allow_responses: true
      }
    }
  ]
}
"#;
        assert_eq!(authorization_block(&reg), expected);
    }
}
