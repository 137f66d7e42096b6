//! Avro in the Confluent wire format against a real schema registry
//! (Apicurio Registry, started by `scripts/test.sh` through
//! `scripts/registry.sh`, at `LEADFLOW_TEST_REGISTRY`) and the real broker:
//! leadflow registers and checks its schemas, the registry refuses a
//! breaking change, and records framed with registry ids go in and come
//! out where they belong, with `schema_*` dead letters for bad frames.
#![cfg(feature = "kafka-tests")]

mod common;

use std::time::Duration;

use common::OutputWithin as _;

use common::{Env, header, produce_values, read_all, t0_rfc3339};
use leadflow::config::RegistryConfig;
use leadflow::registry::{Compatibility, Registration, RegistryClient};
use leadflow::stages::decode::{RAW_LEAD_SCHEMA, write_confluent_header};
use leadflow::stages::encode::CAMPAIGN_LEAD_SCHEMA;
use rdkafka::message::Message;

fn registry_url() -> String {
    std::env::var("LEADFLOW_TEST_REGISTRY")
        .unwrap_or_else(|_| "http://127.0.0.1:18081/apis/ccompat/v7".to_owned())
}

fn client() -> RegistryClient {
    RegistryClient::new(&RegistryConfig {
        url: Some(registry_url()),
        ..RegistryConfig::default()
    })
    .expect("registry client")
}

/// The `[schema_registry]` table and the formats for an [`Env`].
fn confluent_env(name: &str) -> Env {
    confluent_env_with(name, "")
}

/// [`confluent_env`], with `extra` configuration after the registry's.
fn confluent_env_with(name: &str, extra: &str) -> Env {
    let topics = "input_format = \"confluent-avro\"\noutput_format = \"confluent-avro\"";
    let registry = format!("[schema_registry]\nurl = {:?}\n{extra}", registry_url());
    Env::with_topics(name, 1, topics, &registry)
}

/// A schema with one field of `schema` removed: a breaking change for
/// readers that need it, under BACKWARD compatibility.
fn without_field(schema: &str, field: &str) -> String {
    let mut json: serde_json::Value = serde_json::from_str(schema).expect("schema json");
    if let Some(fields) = json["fields"].as_array_mut() {
        fields.retain(|f| f["name"] != field);
    }
    json.to_string()
}

#[test]
fn schemas_register_check_and_a_breaking_change_is_refused() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = confluent_env("schemas");
    let registered = env.leadflow(&["schemas", "register"]);
    let stdout = String::from_utf8_lossy(&registered.stdout);
    assert!(
        registered.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    // The input and the three output topics, each under TOPIC-value.
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.contains("registered, id"))
            .count(),
        4,
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("{}-value", env.nurture)),
        "{stdout}"
    );

    let checked = env.leadflow(&["schemas", "check"]);
    let stdout = String::from_utf8_lossy(&checked.stdout);
    assert!(checked.status.success(), "{stdout}");
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.ends_with(": compatible"))
            .count(),
        4,
        "{stdout}"
    );

    // By record name: one subject per schema, whatever the topic.
    let by_record = env
        .command(&[
            "--set",
            "schema_registry.subject_name_strategy=record-name",
            "schemas",
            "register",
        ])
        .output_within_patience("leadflow runs");
    let stdout = String::from_utf8_lossy(&by_record.stdout);
    assert!(by_record.status.success(), "{stdout}");
    let subjects: Vec<&str> = stdout.lines().filter_map(|l| l.split(' ').next()).collect();
    assert_eq!(
        subjects,
        ["dev.leadflow.RawLead", "dev.leadflow.CampaignLead"],
        "{stdout}"
    );

    // Registering again keeps the id.
    let subject = format!("{}-value", env.nurture);
    let client = client();
    let first = client
        .register(&subject, CAMPAIGN_LEAD_SCHEMA)
        .expect("register");
    assert_eq!(
        client
            .register(&subject, CAMPAIGN_LEAD_SCHEMA)
            .expect("register again"),
        first
    );
    // A required field added without a default breaks BACKWARD: the new
    // reader could not read records written before.
    let mut json: serde_json::Value = serde_json::from_str(CAMPAIGN_LEAD_SCHEMA).expect("json");
    if let Some(fields) = json["fields"].as_array_mut() {
        fields.push(serde_json::json!({"name": "region_code", "type": "string"}));
    }
    let breaking = json.to_string();
    assert!(matches!(
        client.check(&subject, &breaking).expect("check"),
        Compatibility::Incompatible(_)
    ));
    assert!(matches!(
        client.register(&subject, &breaking).expect("register"),
        Registration::Incompatible(_)
    ));
    // Removing a field is fine for BACKWARD readers, and an optional
    // addition too.
    assert_eq!(
        client
            .check(
                &subject,
                &without_field(CAMPAIGN_LEAD_SCHEMA, "description")
            )
            .expect("check"),
        Compatibility::Compatible
    );
    // Unknown ids and subjects are answers, not errors (Apicurio calls
    // any schema compatible with a subject that has none; Confluent's
    // registry answers 404).
    assert_eq!(client.schema_by_id(999_999).expect("by id"), None);
    assert!(matches!(
        client
            .check(&format!("{subject}-none"), CAMPAIGN_LEAD_SCHEMA)
            .expect("check"),
        Compatibility::Compatible | Compatibility::NoSubject
    ));
}

#[test]
fn confluent_framed_leads_go_in_and_come_out_with_registry_ids() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = confluent_env("confluent");
    let client = client();
    // A producer's serializer registers its schema under the input topic's
    // subject: here the raw-lead schema, and a v2 with an optional field.
    let input_subject = format!("{}-value", env.input);
    let Registration::Registered(v1) = client
        .register(&input_subject, RAW_LEAD_SCHEMA)
        .expect("register v1")
    else {
        panic!("v1 refused");
    };
    let mut v2: serde_json::Value = serde_json::from_str(RAW_LEAD_SCHEMA).expect("json");
    if let Some(fields) = v2["fields"].as_array_mut() {
        fields.push(serde_json::json!(
            {"name": "campaign_hint", "type": ["null", "string"], "default": null}
        ));
    }
    let Registration::Registered(v2_id) = client
        .register(&input_subject, &v2.to_string())
        .expect("register v2")
    else {
        panic!("v2 refused");
    };
    assert_ne!(v1, v2_id);

    let received = t0_rfc3339();
    let lead = |id: &str, email: &str, source: &str| {
        format!(
            r#"{{"event_id":"{id}","received_at":"{received}","UserDetails":{{"FirstName":"Ana","LastName":"Silva","Email":"{email}","Country":"PT","Company":"Fabrikam","Title":"CTO"}},"LeadSource":"{source}","ActionCode":"PLT"}}"#
        )
    };
    let framed = |schema_id: u32, json: &str| {
        let mut bytes = Vec::new();
        write_confluent_header(schema_id, &mut bytes);
        bytes.extend(leadflow::generate::to_raw_avro(json.as_bytes()).expect("lead"));
        bytes
    };
    // v2's extra field is optional and written as null by to_raw_avro's
    // v1 datum plus one union branch byte (0 = null).
    let framed_v2 = |json: &str| {
        let mut bytes = framed(v2_id, json);
        bytes.push(0);
        bytes
    };
    let values: Vec<Vec<u8>> = vec![
        framed(
            v1,
            &lead("c1", "ana@fabrikam.com", "SPZA-PLT|contoso.sales-insights"),
        ),
        framed_v2(&lead(
            "c2",
            "raj@northwind.com",
            "AzureMarketplace-PLT|contoso.sales-insights",
        )),
        b"{\"not\":\"framed\"}".to_vec(),
        vec![0, 0, 1],
        framed(
            999_999,
            &lead("c3", "x@fabrikam.com", "SPZA-PLT|contoso.sales-insights"),
        ),
        {
            let mut truncated = framed(
                v1,
                &lead("c4", "y@fabrikam.com", "SPZA-PLT|contoso.sales-insights"),
            );
            truncated.truncate(30);
            truncated
        },
    ];
    produce_values(&env.input, &values, common::now_ms());
    let out = env.run_until_drained();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Outputs are framed with the id the campaign-lead schema has under
    // each topic's subject, which a Confluent deserializer looks up.
    let schema = apache_avro::Schema::parse_str(CAMPAIGN_LEAD_SCHEMA).expect("schema");
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .expect("reader");
    let mut campaigns = Vec::new();
    for (topic, campaign) in [(&env.nurture, "nurture"), (&env.demand_gen, "demand-gen")] {
        let id = client
            .lookup(&format!("{topic}-value"), CAMPAIGN_LEAD_SCHEMA)
            .expect("lookup")
            .expect("registered by leadflow");
        let registered = client.schema_by_id(id).expect("by id").expect("schema");
        assert_eq!(
            apache_avro::Schema::parse_str(&registered.schema)
                .expect("registered schema")
                .canonical_form(),
            schema.canonical_form()
        );
        for m in read_all(topic) {
            let bytes = m.payload().expect("value");
            assert_eq!(bytes[0], 0, "magic byte");
            assert_eq!(
                u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]),
                id
            );
            let value = reader.read_value(&mut &bytes[5..]).expect("campaign lead");
            let json = serde_json::Value::try_from(value).expect("json");
            assert_eq!(json["campaign"], campaign);
            campaigns.push(json["event_id"].as_str().unwrap_or_default().to_owned());
        }
    }
    campaigns.sort();
    assert_eq!(campaigns, ["c1", "c2"]);

    let mut dead: Vec<(String, Option<String>)> = read_all(&env.dead_letter)
        .iter()
        .map(|m| {
            (
                header(m, "leadflow.error.class")
                    .unwrap_or_default()
                    .to_owned(),
                header(m, "leadflow.schema.id").map(str::to_owned),
            )
        })
        .collect();
    dead.sort();
    assert_eq!(
        dead,
        [
            ("schema_body".to_owned(), Some(v1.to_string())),
            ("schema_frame".to_owned(), None),
            ("schema_magic_byte".to_owned(), None),
            ("schema_unknown_id".to_owned(), Some("999999".to_owned())),
        ]
    );
}

#[test]
fn an_unreachable_registry_is_a_one_line_error_within_seconds() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let topics = "output_format = \"confluent-avro\"";
    let env = Env::with_topics(
        "registry-down",
        1,
        topics,
        "[schema_registry]\nurl = \"http://127.0.0.1:1\"\nretries = 1\nretry_backoff_ms = 10\n",
    );
    let started = std::time::Instant::now();
    let out = env
        .command(&["run", "--until-drained"])
        .output_within_patience("leadflow runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(started.elapsed() < std::time::Duration::from_secs(20));
    let last = stderr.lines().last().unwrap_or_default();
    assert!(
        last.contains("schema registry") && last.contains("unreachable"),
        "{stderr}"
    );
}

/// A registry that accepts connections and never answers. Confluent's
/// Python client, configured as `tests/interop/confluent_avro.py` does (a
/// timeout on every request, no kept-alive connection), gives up with an
/// error. Its default configuration has no timeout and waits forever
/// (confluent-kafka-python issue 905): that is how the suite once hung for
/// 8 minutes on a registry request that was never answered.
#[test]
fn the_python_client_gives_up_on_a_registry_that_never_answers() {
    let _deadline = common::deadline(Duration::from_secs(300));
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("address").port();
    // Accepted and held open, never read from or answered.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in silent.incoming().flatten() {
            held.push(stream);
        }
    });
    let root = env!("CARGO_MANIFEST_DIR");
    let mut command = std::process::Command::new("python3");
    command
        .arg(format!("{root}/tests/interop/confluent_avro.py"))
        .args([
            "produce",
            &common::bootstrap(),
            &format!("http://127.0.0.1:{port}"),
            "never-written",
            &format!("{root}/schemas/raw-lead.avsc"),
        ])
        .env("PYTHONPATH", format!("{root}/.cache/python"));
    // Within PATIENCE, or `piped` fails the test with what it printed.
    let out = common::piped(&mut command, "{}\n", "confluent_avro.py");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("timed out"), "{stderr}");
}

/// Runs `tests/interop/confluent_avro.py` with Confluent's Python client,
/// which `scripts/test.sh` installs into `.cache/python`.
fn confluent_python(args: &[&str], stdin: &str) -> std::process::Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut command = std::process::Command::new("python3");
    command
        .arg(format!("{root}/tests/interop/confluent_avro.py"))
        .args(args)
        .env("PYTHONPATH", format!("{root}/.cache/python"));
    let out = common::piped(&mut command, stdin, "confluent_avro.py");
    assert!(
        out.status.success(),
        "confluent_avro.py {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn a_standard_confluent_client_writes_what_leadflow_reads_and_reads_what_it_writes() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = confluent_env("interop");
    let bootstrap = common::bootstrap();
    let registry = registry_url();
    // Leads as Confluent's AvroSerializer takes them: the raw-lead schema's
    // fields, optional ones null or text.
    let lead = |id: &str, email: Option<&str>, source: &str| {
        serde_json::json!({
            "event_id": id,
            "received_at": t0_rfc3339(),
            "UserDetails": {
                "FirstName": "Ana", "LastName": "Silva", "Email": email, "Phone": null,
                "Country": "PT", "Company": "Fabrikam", "Title": "CTO"
            },
            "LeadSource": source,
            "ActionCode": "PLT",
            "OfferTitle": null,
            "Description": null
        })
        .to_string()
    };
    let leads = [
        lead(
            "p1",
            Some("ana@fabrikam.com"),
            "SPZA-PLT|contoso.sales-insights",
        ),
        lead(
            "p2",
            Some("raj@northwind.com"),
            "AzureMarketplace-PLT|contoso.sales-insights",
        ),
        lead("p3", None, "SPZA-PLT|contoso.sales-insights"),
    ]
    .join("\n");
    let schema_file = concat!(env!("CARGO_MANIFEST_DIR"), "/schemas/raw-lead.avsc");
    let produced = confluent_python(
        &["produce", &bootstrap, &registry, &env.input, schema_file],
        &leads,
    );
    assert_eq!(String::from_utf8_lossy(&produced.stdout).trim(), "3");

    let out = env.run_until_drained();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (topic, event_id, campaign) in [
        (&env.nurture, "p1", "nurture"),
        (&env.demand_gen, "p2", "demand-gen"),
    ] {
        let consumed = confluent_python(&["consume", &bootstrap, &registry, topic, "1"], "");
        let record: serde_json::Value =
            serde_json::from_slice(&consumed.stdout).expect("one JSON record");
        assert_eq!(record["event_id"], event_id, "{record}");
        assert_eq!(record["campaign"], campaign, "{record}");
        assert_eq!(record["country"], "PT", "{record}");
    }
    let dead: Vec<String> = read_all(&env.dead_letter)
        .iter()
        .map(|m| {
            header(m, "leadflow.error.class")
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(dead, ["missing_email"]);
}

/// `leadflow run` in the background, serving its operations endpoint on a
/// free port, once `/readyz` says ready.
fn run_until_ready(env: &Env) -> (common::Running, u16) {
    use common::ops::{eventually, free_port, get, listen_on};
    let port = free_port();
    let listen = listen_on(port);
    let run = env.spawn(
        "run",
        &["run", &listen[0], &listen[1]],
        std::process::Stdio::null(),
    );
    eventually("leadflow to be ready", || {
        (get(port, "/readyz")?.0 == 200).then_some(())
    });
    (run, port)
}

/// A registry of a test's own, on its own port, for a test that stops it;
/// stopped when dropped. In-memory, so each start is empty.
struct OwnRegistry {
    port: u16,
    /// https only, with basic authentication (`LEADFLOW_REGISTRY_SECURE`).
    secure: bool,
}

impl OwnRegistry {
    fn start(port: u16) -> OwnRegistry {
        OwnRegistry::start_with(port, false)
    }

    /// Starts on `port`, or, when that and the next two ports (the
    /// management interface, and plain HTTP in secure mode) are not all
    /// free, on the first port after it where they are. Starts are one at a
    /// time, so that tests running in parallel cannot pick the same ports.
    fn start_with(port: u16, secure: bool) -> OwnRegistry {
        static STARTING: std::sync::Mutex<()> = std::sync::Mutex::new(());
        let _one_at_a_time = STARTING.lock().unwrap_or_else(|e| e.into_inner());
        let free = |p: u16| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok();
        let port = (port..u16::MAX - 3)
            .find(|p| (*p..*p + 3).all(free))
            .expect("three free ports");
        let registry = OwnRegistry { port, secure };
        registry.script("start");
        registry
    }

    fn url(&self) -> String {
        self.output("url")
    }

    /// The script's one line of output for `command`.
    fn output(&self, command: &str) -> String {
        let out = self
            .command(command)
            .output_within_patience("scripts/registry.sh runs");
        assert!(out.status.success(), "scripts/registry.sh {command}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    fn script(&self, command: &str) {
        let status = self
            .command(command)
            .status()
            .expect("scripts/registry.sh runs");
        assert!(status.success(), "scripts/registry.sh {command}");
    }

    fn command(&self, command: &str) -> std::process::Command {
        let mut script =
            std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/registry.sh"));
        script
            .arg(command)
            .env("LEADFLOW_REGISTRY_PORT", self.port.to_string())
            .env(
                "LEADFLOW_REGISTRY_SECURE",
                if self.secure { "1" } else { "0" },
            );
        script
    }
}

impl Drop for OwnRegistry {
    fn drop(&mut self) {
        self.script("stop");
    }
}

#[test]
fn while_the_registry_is_down_leadflow_waits_unready_and_dead_letters_nothing() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use common::ops::{eventually, free_port, get};
    let registry = OwnRegistry::start(free_port());
    let topics = "input_format = \"confluent-avro\"\noutput_format = \"confluent-avro\"";
    // Schemas registered by a deploy pipeline, not by leadflow, so that
    // after the registry restarts empty, registering them again in the
    // same order gives the same ids whatever leadflow does meanwhile.
    let settings = format!(
        "[schema_registry]\nurl = {:?}\nauto_register = false\nretries = 0\n",
        registry.url()
    );
    let env = Env::with_topics("registry-outage", 1, topics, &settings);
    let client = RegistryClient::new(&RegistryConfig {
        url: Some(registry.url()),
        ..RegistryConfig::default()
    })
    .expect("client");
    let register_all = || -> Vec<u32> {
        let raw = (format!("{}-value", env.input), RAW_LEAD_SCHEMA);
        let outputs = [&env.suppressed, &env.nurture, &env.demand_gen]
            .map(|topic| (format!("{topic}-value"), CAMPAIGN_LEAD_SCHEMA));
        std::iter::once(raw)
            .chain(outputs)
            .map(
                |(subject, schema)| match client.register(&subject, schema) {
                    Ok(Registration::Registered(id)) => id,
                    other => panic!("{subject}: {other:?}"),
                },
            )
            .collect()
    };
    let ids = register_all();

    let (mut run, port) = run_until_ready(&env);

    registry.script("stop");
    let received = t0_rfc3339();
    let framed = |event_id: &str, source: &str| {
        let json = format!(
            r#"{{"event_id":"{event_id}","received_at":"{received}","UserDetails":{{"Email":"{event_id}@fabrikam.com","Country":"PT"}},"LeadSource":"{source}","ActionCode":"PLT"}}"#
        );
        let mut bytes = Vec::new();
        write_confluent_header(ids[0], &mut bytes);
        bytes.extend(leadflow::generate::to_raw_avro(json.as_bytes()).expect("lead"));
        bytes
    };
    produce_values(
        &env.input,
        &[
            framed("w1", "SPZA-PLT|contoso.sales-insights"),
            framed("w2", "AzureMarketplace-PLT|contoso.sales-insights"),
        ],
        common::now_ms(),
    );
    // leadflow cannot learn the writer schema: it says so on /readyz and
    // keeps the records, rather than dead-lettering them.
    eventually("/readyz to turn unready", || {
        (get(port, "/readyz")?.0 == 503).then_some(())
    });
    assert!(read_all(&env.dead_letter).is_empty());
    assert!(read_all(&env.nurture).is_empty());

    registry.script("start");
    assert_eq!(register_all(), ids, "a fresh registry gives the same ids");
    eventually("both leads to reach their campaigns", || {
        let routed = read_all(&env.nurture).len() + read_all(&env.demand_gen).len();
        (routed == 2).then_some(())
    });
    eventually("leadflow to be ready again", || {
        (get(port, "/readyz")?.0 == 200).then_some(())
    });
    assert!(read_all(&env.dead_letter).is_empty(), "{}", run.log());
    let text = get(port, "/metrics").expect("metrics").1;
    let lookups = |result: &str| {
        common::ops::sample(
            &text,
            &format!("leadflow_schema_lookups_total{{result=\"{result}\"}}"),
        )
    };
    assert!(lookups("failed").is_some_and(|n| n >= 1.0), "{text}");
    assert!(lookups("found").is_some_and(|n| n >= 1.0), "{text}");
    common::signal(&run.0, "TERM");
    let status = run.0.wait().expect("leadflow exits");
    assert!(status.success(), "{}", run.log());
}

#[test]
fn tls_and_basic_authentication_reach_a_secured_registry() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let registry = OwnRegistry::start_with(common::ops::free_port(), true);
    let url = registry.url();
    assert!(url.starts_with("https://"), "{url}");
    let settings = format!(
        "[schema_registry]\nurl = {url:?}\nusername = \"leadflow\"\npassword = \"leadflow-secret\"\nca_file = {:?}\nretries = 0\n",
        registry.output("ca-file")
    );
    let env = Env::with_topics(
        "secured",
        1,
        "output_format = \"confluent-avro\"",
        &settings,
    );
    let registered = env.leadflow(&["schemas", "register"]);
    assert!(
        registered.status.success(),
        "{}",
        String::from_utf8_lossy(&registered.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&registered.stdout)
            .lines()
            .filter(|l| l.contains("registered, id"))
            .count(),
        3
    );
    // A wrong password is refused by the registry, not retried forever.
    let refused = env
        .command(&[
            "--set",
            "schema_registry.password=wrong",
            "schemas",
            "check",
        ])
        .output_within_patience("leadflow runs");
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("HTTP 401"), "{stderr}");
    // Without the registry's CA the certificate is not trusted.
    let untrusted = env
        .command(&["--set", "schema_registry.ca_file=", "schemas", "check"])
        .output_within_patience("leadflow runs");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(!untrusted.status.success());
    assert!(stderr.to_lowercase().contains("certificate"), "{stderr}");
}

#[test]
fn a_reload_routing_to_a_topic_without_a_registered_schema_is_refused() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use common::ops::{eventually, get, sample};
    let registry = format!("[schema_registry]\nurl = {:?}\n", registry_url());
    let env = Env::with_topics(
        "registry-reload",
        1,
        "output_format = \"confluent-avro\"",
        &registry,
    );
    let (mut run, port) = run_until_ready(&env);

    // Route nurture to a topic that exists but whose subject leadflow did
    // not register at start: the topic is created first, with a copy of
    // the new config, so that nothing but the schema can refuse it.
    let moved = format!("{}-moved", env.nurture);
    let config = std::fs::read_to_string(&env.config).expect("config");
    let edited = config.replace(
        &format!("topic = {:?}", env.nurture),
        &format!("topic = {moved:?}"),
    );
    assert_ne!(config, edited);
    let copy = env.config.with_file_name("moved.toml");
    std::fs::write(&copy, &edited).expect("write copy");
    let created = std::process::Command::new(env!("CARGO_BIN_EXE_leadflow"))
        .arg("--config")
        .arg(&copy)
        .args(["topics", "create"])
        .output_within_patience("topics create");
    assert!(
        created.status.success(),
        "{}",
        String::from_utf8_lossy(&created.stderr)
    );
    std::fs::write(&env.config, edited).expect("write config");
    eventually("the reload refused", || {
        let text = get(port, "/metrics")?.1;
        (sample(&text, "leadflow_reloads_total{result=\"refused\"}")? >= 1.0).then_some(())
    });
    assert!(
        run.log()
            .contains("have no schema registered by this process"),
        "{}",
        run.log()
    );
    common::signal(&run.0, "TERM");
    assert!(
        run.0.wait().expect("leadflow exits").success(),
        "{}",
        run.log()
    );
}

#[test]
fn generated_confluent_leads_end_where_the_generator_says() {
    let _deadline = common::deadline(Duration::from_secs(120));
    use leadflow::pipeline::Tally;
    // Through the hop, so that each framed lead is decoded on both sides.
    let env = confluent_env_with("generated", "[pipeline]\nrepartition_shortcut = false\n");
    // `produce` registers the raw-lead schema under the input's subject and
    // frames each lead with its id, as Confluent's serializer would.
    let produced = env.leadflow(&[
        "produce",
        "--count",
        "400",
        "--seed",
        "9",
        "--format",
        "confluent-avro",
    ]);
    assert!(
        produced.status.success(),
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let expected: Tally = serde_json::from_slice(&produced.stdout).expect("expected tally");
    let id = client()
        .lookup(&format!("{}-value", env.input), RAW_LEAD_SCHEMA)
        .expect("lookup")
        .expect("registered by produce");
    let framed = read_all(&env.input)
        .iter()
        .filter(|m| {
            m.payload()
                .is_some_and(|v| v.len() > 5 && v[0] == 0 && v[1..5] == id.to_be_bytes())
        })
        .count();
    // Malformed records (not JSON objects) are written as they are.
    assert!(framed > 350, "{framed} of 400 framed with id {id}");

    let out = env.run_until_drained();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut tally: Tally = serde_json::from_slice(&out.stdout).expect("tally");
    // Framed records went through the repartition hop (and were decoded
    // on both sides of it); the generator does not count that hop.
    assert_eq!(
        tally.repartitioned,
        tally.inputs - tally.dead_letters() - tally.test_leads
    );
    tally.repartitioned = 0;
    assert_eq!(tally, expected);
    assert!(
        expected.dead_letters() > 0 && expected.routed > 0,
        "{expected:?}"
    );
}

/// A registry that answers 25 s late, longer than a transaction may stay
/// open (10 s, and the broker looks for expired ones every 10 s): a writer
/// schema is looked up between transactions, never inside one. On the old main the lookup ran inside the open transaction,
/// the broker aborted it on timeout, and leadflow took the bumped epoch for
/// another instance's fence and exited for good.
#[test]
fn a_registry_answering_late_is_waited_for_between_transactions() {
    let _deadline = common::deadline(Duration::from_secs(300));
    use common::ops::{eventually, free_port, get, listen_on, sample};
    let url = registry_url();
    let upstream = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("registry host:port")
        .to_owned();
    let proxy = common::proxy::DelayProxy::start(&upstream, std::time::Duration::from_secs(25));
    let slow_url = url.replacen(&upstream, &format!("127.0.0.1:{}", proxy.port), 1);
    let settings =
        format!("[schema_registry]\nurl = {slow_url:?}\ntimeout_ms = 40000\nretries = 0\n");
    let env = Env::with_topics(
        "slow-registry",
        1,
        "input_format = \"confluent-avro\"",
        &settings,
    );
    // Two writer schemas, registered directly: leadflow must look each up
    // through the proxy. The second has one more optional field at the end,
    // so its datum is the first's plus that field's null (a 0 byte).
    let subject = format!("{}-value", env.input);
    let mut v2: serde_json::Value = serde_json::from_str(RAW_LEAD_SCHEMA).expect("schema");
    if let Some(fields) = v2["fields"].as_array_mut() {
        fields.push(
            serde_json::json!({"name": "Extra", "type": ["null", "string"], "default": null}),
        );
    }
    let ids: Vec<u32> = [RAW_LEAD_SCHEMA.to_owned(), v2.to_string()]
        .iter()
        .map(|schema| match client().register(&subject, schema) {
            Ok(Registration::Registered(id)) => id,
            other => panic!("{subject}: {other:?}"),
        })
        .collect();
    assert_ne!(ids[0], ids[1]);
    let received = t0_rfc3339();
    let framed = |id: u32, event_id: &str| {
        let json = format!(
            r#"{{"event_id":"{event_id}","received_at":"{received}","UserDetails":{{"Email":"{event_id}@fabrikam.com"}},"LeadSource":"SPZA-PLT|contoso.sales-insights"}}"#
        );
        let mut bytes = Vec::new();
        write_confluent_header(id, &mut bytes);
        bytes.extend(leadflow::generate::to_raw_avro(json.as_bytes()).expect("lead"));
        if id == ids[1] {
            bytes.push(0);
        }
        bytes
    };
    let port = free_port();
    let listen = listen_on(port);
    let mut run = env.spawn(
        "run",
        &["run", &listen[0], &listen[1]],
        std::process::Stdio::null(),
    );
    produce_values(&env.input, &[framed(ids[0], "s1")], common::now_ms());
    eventually("the first lead, after a slow lookup", || {
        (read_all(&env.nurture).len() == 1).then_some(())
    });
    // A lead of a known schema, then one of a new schema, in one batch.
    produce_values(
        &env.input,
        &[framed(ids[0], "s2"), framed(ids[1], "s3")],
        common::now_ms(),
    );
    eventually("both later leads", || {
        assert!(
            run.0.try_wait().expect("poll run").is_none(),
            "leadflow exited: {}",
            run.log()
        );
        (read_all(&env.nurture).len() == 3).then_some(())
    });
    let metrics = get(port, "/metrics").expect("metrics").1;
    assert_eq!(
        sample(&metrics, "leadflow_pipeline_restarts_total"),
        Some(0.0),
        "{}",
        run.log()
    );
    assert!(!run.log().contains("fenced"), "{}", run.log());
    drop(proxy);
}

/// A flood of 10,000 distinct schema ids no registry has: every record is
/// a dead letter (`schema_unknown_id`), while the registry is asked at most
/// a burst of 50 and then once a second, and the ids are remembered for a
/// while, at most 1,000 of them. On the old main each new id cost a
/// registry call and a cache entry kept for the life of the process.
#[test]
fn a_flood_of_unknown_schema_ids_costs_bounded_lookups() {
    let _deadline = common::deadline(Duration::from_secs(300));
    use common::ops::{free_port, get, listen_on, sample};
    let settings = format!(
        "[schema_registry]\nurl = {:?}\nretries = 0\n",
        registry_url()
    );
    let env = Env::with_topics(
        "unknown-ids",
        1,
        "input_format = \"confluent-avro\"",
        &settings,
    );
    let received = t0_rfc3339();
    let json = format!(
        r#"{{"event_id":"u","received_at":"{received}","UserDetails":{{"Email":"u@fabrikam.com"}},"LeadSource":"SPZA-PLT|contoso.sales-insights"}}"#
    );
    let datum = leadflow::generate::to_raw_avro(json.as_bytes()).expect("lead");
    let count = 10_000_u32;
    let values: Vec<Vec<u8>> = (0..count)
        .map(|i| {
            let mut bytes = Vec::new();
            write_confluent_header(2_000_000_000 + i, &mut bytes);
            bytes.extend_from_slice(&datum);
            bytes
        })
        .collect();
    let port = free_port();
    let listen = listen_on(port);
    let started = std::time::Instant::now();
    let run = env.spawn(
        "run",
        &["run", &listen[0], &listen[1]],
        std::process::Stdio::null(),
    );
    produce_values(&env.input, &values, common::now_ms());
    common::ops::wait_for_or(
        "every record dead-lettered",
        || {
            let log = run.log();
            let tail: Vec<&str> = log.lines().rev().take(5).collect();
            format!(
                "{} dead letters; log ends {tail:#?}",
                read_all(&env.dead_letter).len()
            )
        },
        || {
            let dead = read_all(&env.dead_letter);
            (dead.len() == count as usize).then_some(dead)
        },
    )
    .iter()
    .for_each(|m| assert_eq!(header(m, "leadflow.error.class"), Some("schema_unknown_id")));
    let metrics = get(port, "/metrics").expect("metrics").1;
    let lookups = |result: &str| {
        sample(
            &metrics,
            &format!("leadflow_schema_lookups_total{{result=\"{result}\"}}"),
        )
        .unwrap_or(0.0)
    };
    let asked = lookups("unknown") + lookups("found") + lookups("failed");
    let allowed = 50.0 + started.elapsed().as_secs_f64() + 1.0;
    assert!(
        asked >= 50.0 && asked <= allowed,
        "{asked} lookups in {:?}: {}",
        started.elapsed(),
        run.log()
    );
    assert_eq!(lookups("skipped") + asked, f64::from(count));
}

/// The campaign-lead schema grew `listing`, `offer_type` and `publisher`
/// (with defaults) after its first version: the new version registers
/// over the first under the registry's BACKWARD rule, and Confluent's
/// Python consumer reads records of both versions from one topic, each
/// by the writer schema its frame names.
#[test]
fn the_campaign_schema_evolves_backward_and_python_reads_both_versions() {
    let _deadline = common::deadline(Duration::from_secs(120));
    let env = Env::with_topics(
        "evolve",
        1,
        "output_format = \"confluent-avro\"",
        &format!("[schema_registry]\nurl = {:?}\n", registry_url()),
    );
    let bootstrap = common::bootstrap();
    let registry = registry_url();
    let first = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/campaign-lead.v1.avsc"
    );
    // A record of the first version, as a consumer-side tool wrote it
    // before the upgrade; the serializer registers the first version.
    let old_record = serde_json::json!({
        "event_id": "v1-record", "event_time_ms": 1_741_083_302_000_i64,
        "storefront": "appsource", "campaign": "nurture", "source_tag": "SPZA",
        "action_code": "PLT", "earlier_actions": [], "publisher_id": "contoso",
        "offer_id": "sales-insights", "email": "old@fabrikam.com",
        "email_domain": "fabrikam.com", "registrable_domain": "fabrikam.com",
        "email_class": "business", "completeness": 100, "score": 80,
        "behaviour": 50, "fit": 30, "grade": "A", "mql": true, "reasons": [],
        "rules_version": "default-2025.1", "dedupe_key": "00"
    });
    let produced = confluent_python(
        &["produce", &bootstrap, &registry, &env.nurture, first],
        &old_record.to_string(),
    );
    assert_eq!(
        String::from_utf8_lossy(&produced.stdout).trim(),
        "1",
        "{}",
        String::from_utf8_lossy(&produced.stderr)
    );
    let subject = format!("{}-value", env.nurture);
    assert_eq!(
        client()
            .check(&subject, CAMPAIGN_LEAD_SCHEMA)
            .expect("check"),
        Compatibility::Compatible,
        "today's schema is BACKWARD-compatible with the first"
    );

    // leadflow registers today's version at start, and writes with it.
    let examples = leadflow::testkit::example_leads();
    let first_lead = examples.lines().next().expect("an example lead");
    produce_values(
        &env.input,
        &[first_lead.as_bytes().to_vec()],
        leadflow::testkit::EXAMPLE_TIMESTAMP_MS,
    );
    let out = env.run_until_drained();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let versions = registered_versions(&subject);
    assert_eq!(versions, 2, "the first version and today's under {subject}");

    let consumed = confluent_python(&["consume", &bootstrap, &registry, &env.nurture, "2"], "");
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&consumed.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("a JSON record"))
        .collect();
    assert_eq!(records.len(), 2, "{records:?}");
    assert_eq!(records[0]["event_id"], "v1-record");
    assert!(records[0].get("listing").is_none(), "{}", records[0]);
    let new = &records[1];
    assert_eq!(new["event_id"], "0191f0c2-0001-7000-8000-000000000001");
    assert_eq!(
        (&new["listing"], &new["offer_type"], &new["publisher"]),
        (
            &serde_json::json!("app"),
            &serde_json::json!("saas"),
            &serde_json::json!("Contoso")
        ),
        "{new}"
    );
}

/// How many versions the registry holds under `subject`.
fn registered_versions(subject: &str) -> usize {
    let url = format!("{}/subjects/{subject}/versions", registry_url());
    let body = ureq::get(&url)
        .call()
        .expect("versions")
        .body_mut()
        .read_to_string()
        .expect("body");
    let versions: Vec<u32> = serde_json::from_str(&body).expect("a list of versions");
    versions.len()
}
