use super::*;

fn perm(user: &str, vhost: &str, c: &str, w: &str, r: &str) -> Permission {
    Permission {
        user: user.into(),
        vhost: vhost.into(),
        configure: c.into(),
        write: w.into(),
        read: r.into(),
    }
}

#[test]
fn guest_is_seeded_as_rabbitmq_seeds_it() {
    let a = AccessControl::new();
    let guest = a.user("guest").unwrap();
    assert_eq!(guest.tags, ["administrator"]);
    assert_eq!(guest.hashing_algorithm, password::SHA256);
    assert_eq!(
        a.permission("guest", "/"),
        Some(full_permission("guest", "/"))
    );
    assert_eq!(a.loopback_users(), ["guest"]);
}

#[test]
fn loopback_users_is_a_setting_that_survives_re_creating_the_user() {
    let a = AccessControl::new();
    assert_eq!(
        a.login("guest", "guest", false),
        Err(LoginError::LoopbackOnly("guest".into()))
    );
    // Re-creating or re-passwording guest must not open it to the network.
    a.put_user("guest", Credentials::Password("guest".into()), vec![])
        .unwrap();
    assert_eq!(
        a.login("guest", "guest", false),
        Err(LoginError::LoopbackOnly("guest".into()))
    );
    a.change_password("guest", "other").unwrap();
    assert_eq!(
        a.login("guest", "other", false),
        Err(LoginError::LoopbackOnly("guest".into()))
    );
    assert!(a.login("guest", "other", true).is_ok());
    a.set_loopback_users(vec![]);
    assert!(a.login("guest", "other", false).is_ok());
}

#[test]
fn wrong_password_and_unknown_user_look_the_same() {
    let a = AccessControl::new();
    a.put_user(
        "bob",
        Credentials::Password("pw".into()),
        vec!["management".into()],
    )
    .unwrap();
    let wrong = a.login("bob", "px", true).unwrap_err();
    let unknown = a.login("nobody", "px", true).unwrap_err();
    assert!(matches!(wrong, LoginError::InvalidCredentials(_)));
    assert!(matches!(unknown, LoginError::InvalidCredentials(_)));
    assert_eq!(
        a.login("bob", "pw", false),
        Ok(LoggedIn {
            name: "bob".into(),
            tags: vec!["management".into()]
        })
    );
    // A user without a password cannot log in with the empty one.
    a.put_user("nopw", Credentials::None, vec![]).unwrap();
    assert!(a.login("nopw", "", true).is_err());
}

#[test]
fn a_hash_from_rabbitmq_logs_in() {
    let a = AccessControl::new();
    let created = a
        .put_user(
            "bob",
            Credentials::Hash {
                hash: "qBOKyyEgGOln0IOsL+VJWaLlEA3wqkrY50y7EGPxMdHUjRo7".into(),
                algorithm: password::SHA256.into(),
            },
            vec![],
        )
        .unwrap();
    assert!(created);
    assert!(a.login("bob", "bobpw", false).is_ok());
    assert_eq!(
        a.put_user(
            "bob",
            Credentials::Hash {
                hash: "not base64!".into(),
                algorithm: password::SHA256.into()
            },
            vec![]
        ),
        Err(AccessError::NotBase64)
    );
}

#[test]
fn every_change_moves_the_generation_and_recompiles() {
    let a = AccessControl::new();
    a.put_user("bob", Credentials::Password("pw".into()), vec![])
        .unwrap();
    assert!(a.compiled("bob", "/").is_none(), "no permission yet");
    let g = a.generation();
    a.set_permission(perm("bob", "/", "^cfg", "", "")).unwrap();
    assert!(a.generation() > g);
    let p = a.compiled("bob", "/").unwrap();
    assert!(p.allows(ResourceKind::Queue, "cfg.q", Perm::Configure));
    let g = a.generation();
    a.set_permission(perm("bob", "/", "^other", "", ""))
        .unwrap();
    assert!(a.generation() > g);
    let p = a.compiled("bob", "/").unwrap();
    assert!(!p.allows(ResourceKind::Queue, "cfg.q", Perm::Configure));
    assert!(a.clear_permission("bob", "/").unwrap());
    assert!(a.compiled("bob", "/").is_none());
    assert_eq!(
        a.check("bob", "/", ResourceKind::Queue, "q", Perm::Read)
            .unwrap_err()
            .to_string(),
        "ACCESS_REFUSED - access to queue 'q' in vhost '/' refused for user 'bob'"
    );
}

#[test]
fn invalid_expressions_and_unknown_users_change_nothing() {
    let a = AccessControl::new();
    let g = a.generation();
    assert!(matches!(
        a.set_permission(perm("guest", "/", "(", ".*", ".*")),
        Err(AccessError::InvalidPattern(_))
    ));
    assert_eq!(
        a.set_permission(perm("nobody", "/", ".*", ".*", ".*")),
        Err(AccessError::NoSuchUser("nobody".into()))
    );
    assert_eq!(a.generation(), g);
    assert_eq!(
        a.permission("guest", "/"),
        Some(full_permission("guest", "/"))
    );
}

#[test]
fn deleting_a_user_deletes_their_permissions() {
    let a = AccessControl::new();
    a.put_user("bob", Credentials::Password("pw".into()), vec![])
        .unwrap();
    a.set_permission(full_permission("bob", "/")).unwrap();
    a.set_topic_permission(TopicPermission {
        user: "bob".into(),
        vhost: "/".into(),
        exchange: "amq.topic".into(),
        write: ".*".into(),
        read: ".*".into(),
    })
    .unwrap();
    assert!(a.delete_user("bob").unwrap());
    assert!(!a.delete_user("bob").unwrap());
    a.put_user("bob", Credentials::Password("pw".into()), vec![])
        .unwrap();
    assert!(!a.vhost_access("bob", "/"), "a new bob starts with nothing");
    assert!(a.topic_permissions().is_empty());
}

#[test]
fn topic_permissions_compile_per_exchange() {
    let a = AccessControl::new();
    a.set_topic_permission(TopicPermission {
        user: "guest".into(),
        vhost: "/".into(),
        exchange: "amq.topic".into(),
        write: "^{username}\\.".into(),
        read: "".into(),
    })
    .unwrap();
    let p = a.compiled("guest", "/").unwrap();
    assert!(p.has_topic_rules("amq.topic"));
    assert!(!p.has_topic_rules("other"));
    assert!(p.check_topic("amq.topic", "guest.k", Perm::Write).is_ok());
    assert!(p.check_topic("amq.topic", "bob.k", Perm::Write).is_err());
    assert!(p.check_topic("amq.topic", "guest.k", Perm::Read).is_err());
    assert!(a.clear_topic_permission("guest", "/", None).unwrap());
    assert!(!a
        .compiled("guest", "/")
        .unwrap()
        .has_topic_rules("amq.topic"));
}

#[test]
fn the_access_file_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = AccessControl::open(dir.path(), &["/".into()]).unwrap();
        a.put_user(
            "bob",
            Credentials::Password("pw".into()),
            vec!["monitoring".into()],
        )
        .unwrap();
        a.set_permission(perm("bob", "/", "^c", "^w", "^r"))
            .unwrap();
    }
    let a = AccessControl::open(dir.path(), &["/".into()]).unwrap();
    assert_eq!(a.user("bob").unwrap().tags, ["monitoring"]);
    assert!(a.login("bob", "pw", false).is_ok());
    assert_eq!(
        a.permission("bob", "/"),
        Some(perm("bob", "/", "^c", "^w", "^r"))
    );
    assert!(a.user("guest").is_some());
}

#[test]
fn a_format_1_users_file_is_migrated_keeping_what_users_could_do() {
    let dir = tempfile::tempdir().unwrap();
    let hash = password::hash("s3cret");
    let v1 = serde_json::json!([
        { "name": "guest", "password_hash": password::hash("guest"), "loopback_only": true },
        { "name": "ops", "password_hash": hash, "loopback_only": false },
    ]);
    std::fs::write(dir.path().join(V1_USERS_FILE), v1.to_string()).unwrap();
    let vhosts = ["/".to_owned(), "eu".to_owned()];
    let a = AccessControl::open(dir.path(), &vhosts).unwrap();
    assert!(a.login("ops", "s3cret", false).is_ok());
    assert_eq!(
        a.login("guest", "guest", false),
        Err(LoginError::LoopbackOnly("guest".into()))
    );
    assert_eq!(a.user("ops").unwrap().tags, ["administrator"]);
    assert!(a.vhost_access("ops", "/") && a.vhost_access("ops", "eu"));
    assert!(!dir.path().join(V1_USERS_FILE).exists());
    assert!(dir.path().join(ACCESS_FILE).exists());
}

#[test]
fn limits_survive_a_reopen_and_go_with_their_user_or_vhost() {
    let dir = tempfile::tempdir().unwrap();
    let plain = std::fs::read(dir.path().join(ACCESS_FILE)).ok();
    {
        let a = AccessControl::open(dir.path(), &["/".into(), "eu".into()]).unwrap();
        let before = std::fs::read(dir.path().join(ACCESS_FILE)).unwrap();
        assert!(
            !String::from_utf8_lossy(&before).contains("limits"),
            "no limits, no new keys: the file is what earlier versions wrote"
        );
        a.put_user("bob", Credentials::Password("pw".into()), vec![])
            .unwrap();
        a.set_user_limit("bob", "max-channels", 5).unwrap();
        a.set_vhost_limit("/", "max-queues", 10).unwrap();
        a.set_vhost_limit("eu", "max-connections", -1).unwrap();
        assert_eq!(
            a.set_user_limit("nobody", "max-channels", 1),
            Err(AccessError::NoSuchUser("nobody".into()))
        );
        assert!(matches!(
            a.set_vhost_limit("/", "max-channels", 1),
            Err(AccessError::InvalidLimit(_))
        ));
    }
    assert!(plain.is_none());
    let a = AccessControl::open(dir.path(), &["/".into()]).unwrap();
    assert_eq!(a.user_limits("bob").limit("max-channels"), Some(5));
    assert_eq!(a.vhost_limits("/").limit("max-queues"), Some(10));
    assert_eq!(a.vhost_limits("eu").value("max-connections"), Some(-1));
    assert_eq!(a.all_vhost_limits().len(), 2);
    a.clear_vhost_limit("eu", "max-connections").unwrap();
    assert!(a.vhost_limits("eu").is_empty());
    assert_eq!(
        a.all_vhost_limits().len(),
        1,
        "an emptied vhost is not listed"
    );
    a.remove_vhost("/").unwrap();
    assert!(a.all_vhost_limits().is_empty());
    a.delete_user("bob").unwrap();
    a.put_user("bob", Credentials::Password("pw".into()), vec![])
        .unwrap();
    assert!(a.user_limits("bob").is_empty(), "not back with the name");
}

#[test]
fn the_cluster_name_survives_a_reopen_and_travels_in_snapshots() {
    let dir = tempfile::tempdir().unwrap();
    {
        let a = AccessControl::open(dir.path(), &["/".into()]).unwrap();
        assert_eq!(a.cluster_name(), None);
        assert!(a.set_cluster_name("payments-eu").unwrap());
        assert!(!a.set_cluster_name("payments-eu").unwrap(), "unchanged");
    }
    let a = AccessControl::open(dir.path(), &["/".into()]).unwrap();
    assert_eq!(a.cluster_name().as_deref(), Some("payments-eu"));

    // A member catching up from a snapshot takes the name with it.
    let b = AccessControl::new();
    b.replace_all(a.snapshot()).unwrap();
    assert_eq!(b.cluster_name().as_deref(), Some("payments-eu"));
    // A snapshot of an older version has none.
    let mut older = serde_json::to_value(a.snapshot()).unwrap();
    older.as_object_mut().unwrap().remove("cluster_name");
    let older: AccessSnapshot = serde_json::from_value(older).unwrap();
    b.replace_all(older).unwrap();
    assert_eq!(b.cluster_name(), None);
}
