//! `report.html`: one self-contained page for a capacity planner — headline figures, gate
//! verdicts, the per-tenant table, outcome counts, the cost and break-even reasoning, and the
//! plots inlined as SVG. No scripts, no external stylesheets, fonts or images: the file can be
//! mailed or archived as a CI artifact and still render. Every string from the run passes
//! through [`escape`] on its way in.

use std::collections::HashSet;
use std::fmt::Write as _;

use crate::aggregate::Statistics;
use crate::distribution::LatencyStats;
use crate::plot::Plot;
use crate::record::Outcome;
use crate::summary::Summary;
use crate::table::{breakeven_sentence, gbp, limit, ms, number, rate};

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;margin:0;color:#1f2937;background:#f8fafc}
main{max-width:1100px;margin:0 auto;padding:24px}
h1{margin:0 0 4px;font-size:26px}h2{margin:32px 0 8px;font-size:20px;border-bottom:1px solid #e2e8f0;padding-bottom:4px}
.meta{color:#475569;margin:0 0 16px}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(160px,1fr));gap:10px}
.card{background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:10px 12px}
.card .k{font-size:12px;color:#64748b;text-transform:uppercase;letter-spacing:.04em}
.card .v{font-size:22px;font-weight:600;margin-top:2px}
.card .s{font-size:12px;color:#64748b}
table{border-collapse:collapse;background:#fff;font-size:13px;width:100%}
th,td{border:1px solid #e2e8f0;padding:4px 6px;text-align:right;white-space:nowrap}
th{background:#f1f5f9}td.l,th.l{text-align:left}
tr.fail td{background:#fef2f2}
.scroll{overflow-x:auto}
.pass{color:#15803d;font-weight:600}.failv{color:#b91c1c;font-weight:600}
.verdict{display:inline-block;padding:2px 8px;border-radius:4px;font-weight:600}
.verdict.ok{background:#dcfce7;color:#166534}.verdict.bad{background:#fee2e2;color:#991b1b}
figure{margin:16px 0;background:#fff;border:1px solid #e2e8f0;border-radius:8px;padding:8px}
figure svg{width:100%;height:auto}
figcaption{color:#475569;font-size:13px;margin-top:4px}
code{background:#f1f5f9;padding:0 3px;border-radius:3px}
dt{font-weight:600;margin-top:6px}dd{margin-left:16px;color:#334155}
";

/// Renders the page.
pub fn render_html(summary: &Summary, plots: &[Plot]) -> String {
    let mut h = String::with_capacity(64 * 1024 + plots.iter().map(|p| p.svg.len()).sum::<usize>());
    let title = format!("tenantbench — {}", summary.scenario);
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n<main>\n",
        escape(&title)
    );
    header(&mut h, summary);
    headline(&mut h, summary);
    gates(&mut h, summary);
    isolation(&mut h, summary);
    tenants(&mut h, summary);
    outcomes(&mut h, summary);
    cost(&mut h, summary);
    figures(&mut h, plots);
    engines(&mut h, summary);
    notes(&mut h, summary);
    definitions(&mut h);
    h.push_str("</main>\n</body>\n</html>\n");
    h
}

fn header(h: &mut String, s: &Summary) {
    let _ = write!(
        h,
        "<h1>{}</h1>\n<p class=\"meta\">seed {} · started {} · {} s measured after {} s \
         warm-up ({} warm-up requests not counted) · {} tenants in {} groups · target {}</p>\n",
        escape(&s.scenario),
        s.seed,
        escape(&utc_time(s.started_at_unix_ms)),
        s.duration_s,
        s.warmup_s,
        s.warmup_requests,
        s.tenants.len(),
        s.groups.len(),
        escape(&s.target)
    );
}

fn card(h: &mut String, key: &str, value: &str, sub: &str) {
    let _ = writeln!(
        h,
        "<div class=\"card\"><div class=\"k\">{}</div><div class=\"v\">{}</div>\
         <div class=\"s\">{}</div></div>",
        escape(key),
        escape(value),
        escape(sub)
    );
}

fn headline(h: &mut String, s: &Summary) {
    let o = &s.overall;
    h.push_str("<section id=\"headline\"><div class=\"cards\">\n");
    card(
        h,
        "tenants",
        &s.tenants.len().to_string(),
        &format!("{} groups", s.groups.len()),
    );
    card(
        h,
        "successful req/s",
        &rate(o.requests_per_s),
        &format!("of {} offered", rate(o.offered_requests_per_s)),
    );
    card(
        h,
        "output tokens/s",
        &rate(o.output_tokens_per_s),
        "successful requests",
    );
    card(
        h,
        "TTFT p50",
        &with_ms(o.ttft_ms.p50),
        &format!("p99 {}", with_ms(o.ttft_ms.p99)),
    );
    card(
        h,
        "ITL p50",
        &with_ms(o.itl_ms.p50),
        &format!("p99 {}", with_ms(o.itl_ms.p99)),
    );
    card(
        h,
        "E2E p99",
        &with_ms(o.e2e_ms.p99),
        &format!("p50 {}", with_ms(o.e2e_ms.p50)),
    );
    card(
        h,
        "error rate",
        &percent(o.error_rate),
        &format!("{} rate-limited", o.outcomes.rate_limited),
    );
    card(
        h,
        "£ per tenant / month",
        &gbp(s.cost.per_tenant_month),
        &format!("API equivalent {}", gbp(s.cost.api_per_tenant_month)),
    );
    card(
        h,
        "break-even",
        &s.cost
            .breakeven_tenants
            .map_or_else(|| "never".to_owned(), |n| format!("{n} tenants")),
        "self-hosted vs API",
    );
    if !s.gates.is_empty() {
        let failed = s.failed_gates().count();
        let mut detail = format!("{} of {} passed", s.passed_gates().count(), s.gates.len());
        let skipped = s.skipped_gates().count();
        if skipped > 0 {
            detail.push_str(&format!(", {skipped} skipped"));
        }
        card(
            h,
            "gates",
            if failed == 0 { "PASS" } else { "FAIL" },
            &detail,
        );
    }
    h.push_str("</div></section>\n");
}

fn gates(h: &mut String, s: &Summary) {
    h.push_str("<section id=\"gates\"><h2>Gates</h2>\n");
    if s.gates.is_empty() {
        h.push_str("<p>The scenario declares no gates.</p></section>\n");
        return;
    }
    let skipped = s.skipped_gates().count();
    let verdict = if !s.gates_passed() {
        "<span class=\"verdict bad\">gates failed: the run exits with code 3</span>".to_owned()
    } else if skipped > 0 {
        format!(
            "<span class=\"verdict ok\">no gate failed</span>; {skipped} skipped (their tenant \
             or group ran in another shard; the merged result judges them)"
        )
    } else {
        "<span class=\"verdict ok\">all gates passed</span>".to_owned()
    };
    let _ = writeln!(h, "<p>{verdict}</p>");
    h.push_str(
        "<div class=\"scroll\"><table><tr><th class=\"l\">gate</th><th class=\"l\">scope</th>\
         <th class=\"l\">metric</th><th>observed</th><th>must be</th><th class=\"l\">verdict</th>\
         <th class=\"l\">details</th></tr>\n",
    );
    for g in &s.gates {
        let mut details = String::new();
        if let Some(e) = &g.error {
            details.push_str(e);
        }
        let skipped = g.skipped.as_ref().filter(|_| g.passed);
        if let Some(why) = skipped {
            details.push_str(why);
        }
        if !g.failures.is_empty() {
            let failing: Vec<String> = g
                .failures
                .iter()
                .map(|f| match f.observed {
                    Some(v) => format!("{} ({})", f.subject, number(v)),
                    None => format!("{} (no data)", f.subject),
                })
                .collect();
            if !details.is_empty() {
                details.push_str("; ");
            }
            details.push_str(&format!("failing: {}", failing.join(", ")));
        }
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\"><code>{}</code></td>\
             <td>{}</td><td>{} {}</td><td class=\"l\">{}</td><td class=\"l\">{}</td></tr>",
            escape(&g.name),
            escape(&g.scope.to_string()),
            escape(&g.metric),
            g.observed.map_or_else(|| "no data".to_owned(), number),
            escape(g.op.symbol()),
            number(g.threshold),
            if skipped.is_some() {
                "SKIP"
            } else if g.passed {
                "<span class=\"pass\">PASS</span>"
            } else {
                "<span class=\"failv\">FAIL</span>"
            },
            escape(&details)
        );
    }
    h.push_str("</table></div></section>\n");
}

fn isolation(h: &mut String, s: &Summary) {
    let Some(i) = &s.isolation else {
        return;
    };
    let badge = |ok: bool, yes: &str, no: &str| {
        if ok {
            format!("<span class=\"pass\">{yes}</span>")
        } else {
            format!("<span class=\"failv\">{no}</span>")
        }
    };
    let _ = writeln!(
        h,
        "<section id=\"isolation\"><h2>Isolation</h2>\n<p>{}: each victim's <code>{}</code> in \
         phase <em>{}</em> against phase <em>{}</em> must stay within {}×, and the router must \
         hold each aggressor to its limits. A ratio counts only when both phases have at least \
         {} values; smaller samples are shown but not judged (a p99 of a few dozen requests is \
         one slow request). Victims {}, aggressor limits {}.</p>",
        badge(i.passed, "PASS", "FAIL"),
        escape(&i.metric),
        escape(&i.test.name),
        escape(&i.baseline.name),
        number(i.max_ratio),
        i.min_samples,
        badge(
            i.victims_passed,
            "within the ratio",
            "slowed past the ratio"
        ),
        badge(i.limits_held, "held", "broken"),
    );
    h.push_str(
        "<div class=\"scroll\"><table><tr><th class=\"l\">victim</th><th>baseline ms</th>\
         <th>test ms</th><th>ratio</th><th>samples</th><th class=\"l\">verdict</th></tr>\n",
    );
    for v in i.pooled.iter().chain(&i.victims) {
        let verdict = if v.judged {
            badge(v.passed, "PASS", "FAIL")
        } else {
            "not judged".to_owned()
        };
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{} / {}</td>\
             <td class=\"l\">{verdict}</td></tr>",
            escape(&v.tenant),
            v.baseline_ms.map_or_else(|| "-".to_owned(), number),
            v.test_ms.map_or_else(|| "-".to_owned(), number),
            v.ratio
                .map_or_else(|| "-".to_owned(), |r| format!("{r:.2}")),
            v.baseline_samples,
            v.test_samples,
        );
    }
    h.push_str(
        "</table></div>\n<div class=\"scroll\"><table><tr><th class=\"l\">aggressor</th>\
         <th>offered /s</th><th>accepted /s</th><th>refused</th><th>busiest minute (requests)</th>\
         <th>rpm_limit</th><th>busiest minute (tokens)</th><th>tpm_limit</th>\
         <th class=\"l\">limits</th></tr>\n",
    );
    for a in &i.aggressors {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(&a.tenant),
            number(a.offered_per_s),
            number(a.accepted_per_s),
            a.refused,
            a.max_accepted_requests_per_min,
            limit(a.rpm_limit),
            a.max_accepted_tokens_per_min,
            limit(a.tpm_limit),
            badge(a.limits_held, "held", "broken"),
        );
    }
    h.push_str("</table></div></section>\n");
}

fn tenants(h: &mut String, s: &Summary) {
    // Tenants named by a failed gate are shaded so the eye finds them in a long table.
    let failing: HashSet<&str> = s
        .gates
        .iter()
        .flat_map(|g| g.failures.iter())
        .filter_map(|f| f.subject.strip_prefix("tenant "))
        .collect();
    h.push_str(
        "<section id=\"tenants\"><h2>Tenants</h2>\n<p>Latencies in ms over successful requests \
         only, measured from the intended send time; money in £ per month at the measured \
         rate.</p>\n<div class=\"scroll\"><table>\n<tr><th class=\"l\">tenant</th>\
         <th class=\"l\">group</th><th class=\"l\">model</th><th class=\"l\">LoRA</th>\
         <th>sent</th><th>ok</th><th>429</th><th>budget</th><th>other errors</th>\
         <th>error rate</th><th>req/s</th><th>out tok/s</th><th>TTFT p50</th><th>TTFT p99</th>\
         <th>TPOT p50</th><th>ITL p50</th><th>ITL p99</th><th>E2E p50</th><th>E2E p99</th>\
         <th>£ self-hosted</th><th>£ API</th></tr>\n",
    );
    for t in &s.tenants {
        let class = if failing.contains(t.tenant.as_str()) {
            " class=\"fail\""
        } else {
            ""
        };
        let _ = write!(
            h,
            "<tr{class}><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td class=\"l\">{}</td>",
            escape(&t.tenant),
            escape(&t.group),
            escape(&t.model),
            escape(t.lora.as_deref().unwrap_or("—"))
        );
        stat_cells(h, &t.stats);
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td></tr>",
            escape(&gbp(Some(t.cost.self_hosted_gbp_per_month))),
            escape(&gbp(Some(t.cost.api_gbp_per_month)))
        );
    }
    for g in &s.groups {
        let _ = write!(
            h,
            "<tr><th class=\"l\">group</th><th class=\"l\">{}</th><th class=\"l\" colspan=\"2\">\
             {} tenants</th>",
            escape(&g.group),
            g.tenant_count
        );
        stat_cells(h, &g.stats);
        let _ = writeln!(
            h,
            "<td>{}</td><td>{}</td></tr>",
            escape(&gbp(Some(g.cost.self_hosted_gbp_per_month))),
            escape(&gbp(Some(g.cost.api_gbp_per_month)))
        );
    }
    h.push_str("<tr><th class=\"l\" colspan=\"4\">overall</th>");
    stat_cells(h, &s.overall);
    let _ = writeln!(
        h,
        "<td>{}</td><td>{}</td></tr>",
        escape(&gbp(Some(s.cost.self_hosted_gbp_per_month))),
        escape(&gbp(Some(s.cost.api_gbp_per_month)))
    );
    h.push_str("</table></div></section>\n");
}

/// Reads one figure of a latency object.
type Pick = fn(&LatencyStats) -> Option<f64>;

fn stat_cells(h: &mut String, st: &Statistics) {
    let o = &st.outcomes;
    let other = o.failed() - o.rate_limited - o.budget_exceeded;
    let _ = write!(
        h,
        "<td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td>",
        st.requests,
        o.ok,
        o.rate_limited,
        o.budget_exceeded,
        other,
        percent(st.error_rate),
        rate(st.requests_per_s),
        rate(st.output_tokens_per_s)
    );
    let lat: [(&LatencyStats, Pick); 7] = [
        (&st.ttft_ms, |l| l.p50),
        (&st.ttft_ms, |l| l.p99),
        (&st.tpot_ms, |l| l.p50),
        (&st.itl_ms, |l| l.p50),
        (&st.itl_ms, |l| l.p99),
        (&st.e2e_ms, |l| l.p50),
        (&st.e2e_ms, |l| l.p99),
    ];
    for (l, pick) in lat {
        let _ = write!(h, "<td>{}</td>", ms(pick(l)));
    }
}

fn outcomes(h: &mut String, s: &Summary) {
    h.push_str(
        "<section id=\"outcomes\"><h2>Outcomes</h2>\n<p>Every request sent in the measured \
         window, by how it ended. Only <code>ok</code> requests enter the latency figures; a \
         stream that ends without <code>[DONE]</code> is <code>truncated</code>, an error event \
         inside a 200 stream is <code>stream_error</code>.</p>\n<div class=\"scroll\"><table><tr>\
         <th class=\"l\">scope</th>",
    );
    for o in Outcome::ALL {
        let _ = write!(h, "<th>{}</th>", o.as_str());
    }
    h.push_str("<th>total</th></tr>\n");
    let mut row = |label: String, st: &Statistics| {
        let _ = write!(h, "<tr><td class=\"l\">{}</td>", escape(&label));
        for o in Outcome::ALL {
            let _ = write!(h, "<td>{}</td>", st.outcomes.get(o));
        }
        let _ = writeln!(h, "<td>{}</td></tr>", st.requests);
    };
    for g in &s.groups {
        row(format!("group {}", g.group), &g.stats);
    }
    row("overall".to_owned(), &s.overall);
    h.push_str("</table></div></section>\n");
}

fn cost(h: &mut String, s: &Summary) {
    let c = &s.cost;
    let lora_tenants = s.tenants.iter().filter(|t| t.lora.is_some()).count();
    let lora_each = if lora_tenants > 0 {
        c.lora_gbp_per_month / lora_tenants as f64
    } else {
        0.0
    };
    let hours = number(c.active_hours_per_month);
    h.push_str("<section id=\"cost\"><h2>Cost and break-even</h2>\n");
    let _ = writeln!(
        h,
        "<p><b>Self-hosted:</b> the server costs {} a month; {lora_tenants} tenants have a LoRA \
         adapter whose training is amortised at {} a month each, {} in all. Together {} a month, \
         or <b>{} per tenant</b> for the {} tenants of this run.</p>",
        escape(&gbp(Some(c.server_gbp_per_month))),
        escape(&gbp(Some(lora_each))),
        escape(&gbp(Some(c.lora_gbp_per_month))),
        escape(&gbp(Some(c.self_hosted_gbp_per_month))),
        escape(&gbp(c.per_tenant_month)),
        c.tenants
    );
    let _ = writeln!(
        h,
        "<p><b>API equivalent:</b> the successful requests of the measured window, scaled to \
         {hours} active hours a month, come to {} million prompt and {} million generated tokens \
         a month; at the scenario's API prices that is {} a month, <b>{} per tenant</b> on \
         average.</p>",
        number(c.input_tokens_per_month / 1e6),
        number(c.output_tokens_per_month / 1e6),
        escape(&gbp(Some(c.api_gbp_per_month))),
        escape(&gbp(c.api_per_tenant_month)),
    );
    let (api, lora) = (
        c.api_per_tenant_month.unwrap_or(0.0),
        if c.tenants > 0 {
            c.lora_gbp_per_month / c.tenants as f64
        } else {
            0.0
        },
    );
    let bound = if api > lora {
        format!(" = {}", number(c.server_gbp_per_month / (api - lora)))
    } else {
        String::new()
    };
    let _ = writeln!(
        h,
        "<p><b>Break-even:</b> self-hosting is cheaper for the average tenant when server ÷ n + \
         LoRA per tenant &lt; API per tenant, that is n &gt; {} ÷ ({} − {}){bound}, where {} is \
         the LoRA cost of the average tenant. {}.</p>",
        escape(&gbp(Some(c.server_gbp_per_month))),
        escape(&gbp(Some(api))),
        escape(&gbp(Some(lora))),
        escape(&gbp(Some(lora))),
        escape(&capitalise(&breakeven_sentence(c)))
    );
    h.push_str(
        "<p>The model assumes every added tenant sends like this run's average tenant, and it \
         does not check capacity: whether one server carries that many tenants within the SLO is \
         what the latency figures and gates say. Run the scenario at the break-even tenant count \
         to find out.</p></section>\n",
    );
}

fn figures(h: &mut String, plots: &[Plot]) {
    h.push_str("<section id=\"plots\"><h2>Plots</h2>\n");
    for p in plots {
        let _ = writeln!(
            h,
            "<figure id=\"{}\"><h3>{}</h3>\n{}\n<figcaption>{} (<code>plots/{}</code>)</figcaption></figure>",
            escape(p.file.trim_end_matches(".svg")),
            escape(p.title),
            // The SVG comes from plotters, which escapes the text it draws.
            strip_xml_declaration(&p.svg),
            escape(&p.caption),
            escape(p.file)
        );
    }
    h.push_str("</section>\n");
}

fn engines(h: &mut String, s: &Summary) {
    if s.engines.is_empty() {
        return;
    }
    h.push_str(
        "<section id=\"engines\"><h2>Engines</h2>\n<div class=\"scroll\"><table><tr>\
         <th class=\"l\">engine</th><th class=\"l\">GPU</th><th class=\"l\">model</th>\
         <th class=\"l\">precision</th><th>KV cache tokens</th><th>max LoRAs</th>\
         <th class=\"l\">URL</th></tr>\n",
    );
    for e in &s.engines {
        let _ = writeln!(
            h,
            "<tr><td class=\"l\">{}</td><td class=\"l\">{}</td><td class=\"l\">{}</td>\
             <td class=\"l\">{}</td><td>{}</td><td>{}</td><td class=\"l\">{}</td></tr>",
            escape(&e.name),
            escape(&e.gpu),
            escape(&e.model),
            escape(&e.precision),
            e.kv_cache_tokens,
            e.max_loras,
            escape(&e.url)
        );
    }
    h.push_str("</table></div></section>\n");
}

fn notes(h: &mut String, s: &Summary) {
    if s.notes.is_empty() {
        return;
    }
    h.push_str("<section id=\"notes\"><h2>Notes</h2><ul>\n");
    for n in &s.notes {
        let _ = writeln!(h, "<li>{}</li>", escape(n));
    }
    h.push_str("</ul></section>\n");
}

fn definitions(h: &mut String) {
    h.push_str(
        "<section id=\"definitions\"><h2>How to read this report</h2><dl>\n\
         <dt>TTFT</dt><dd>Time from the request's intended send time to its first generated \
         token on any channel (content, reasoning or tool call). Measuring from the intended \
         time means a late load generator shows up as latency instead of hiding it; \
         <code>ttft_raw_ms</code> in <code>summary.json</code> is measured from the actual send.\
         </dd>\n\
         <dt>TPOT</dt><dd>(E2E − TTFT) ÷ (output tokens − 1): the average time per generated \
         token after the first.</dd>\n\
         <dt>ITL</dt><dd>Inter-token latency, one value per token: a chunk carrying several \
         tokens spreads its gap over them. Gaps between chunks are <code>inter_chunk_ms</code>.\
         </dd>\n\
         <dt>E2E</dt><dd>Intended send time to the end of the response.</dd>\n\
         <dt>Percentiles</dt><dd>From HdrHistograms with 3 significant digits at microsecond \
         resolution; groups and the overall row merge tenants' histograms, never their \
         percentiles. <code>histograms/*.hlog</code> holds them per tenant and interval.</dd>\n\
         <dt>Requests per second</dt><dd>Successful requests ÷ the measured window; \
         warm-up requests are listed in <code>requests.csv</code> and counted nowhere else.</dd>\n\
         </dl></section>\n",
    );
}

fn strip_xml_declaration(svg: &str) -> &str {
    let t = svg.trim_start();
    match t.strip_prefix("<?xml") {
        Some(rest) => rest
            .split_once("?>")
            .map_or(t, |(_, body)| body.trim_start()),
        None => t,
    }
}

fn capitalise(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        Some(f) => f.to_uppercase().chain(c).collect(),
        None => String::new(),
    }
}

fn with_ms(v: Option<f64>) -> String {
    match v {
        Some(_) => format!("{} ms", ms(v)),
        None => "no data".to_owned(),
    }
}

fn percent(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| format!("{:.2} %", v * 100.0))
}

/// `YYYY-MM-DD HH:MM:SS UTC` for a Unix time in ms, without a date library.
pub(crate) fn utc_time(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (y, m, d) = civil_date(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Gregorian date of a day count since 1970-01-01, by counting 400-year eras (146,097 days
/// each) from 0000-03-01, so that leap days fall at the end of each counted year.
fn civil_date(days_since_epoch: i64) -> (i64, u32, u32) {
    let z = days_since_epoch + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plot::render_plots;
    use crate::summary::{summarize, tests::small_run};

    #[test]
    fn escape_covers_markup_characters() {
        assert_eq!(
            escape("<script>alert('x') & \"y\"</script>"),
            "&lt;script&gt;alert(&#39;x&#39;) &amp; &quot;y&quot;&lt;/script&gt;"
        );
    }

    #[test]
    fn dates_are_gregorian() {
        assert_eq!(utc_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(utc_time(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(utc_time(1_700_000_000_000), "2023-11-14 22:13:20 UTC");
        assert_eq!(utc_time(4_107_542_399_000), "2100-02-28 23:59:59 UTC");
    }

    #[test]
    fn hostile_names_are_escaped_everywhere() {
        let mut run = small_run();
        run.scenario = "<b>bold</b>".to_owned();
        run.tenants[0].id = "<img src=x onerror=alert(1)>".to_owned();
        for r in run.records.iter_mut().filter(|r| r.tenant == "a") {
            r.tenant = run.tenants[0].id.clone();
        }
        run.notes.push("<script>bad()</script>".to_owned());
        let summary = summarize(&run);
        let plots = render_plots(&run, &summary).unwrap_or_else(|e| panic!("{e}"));
        let page = render_html(&summary, &plots);
        assert!(!page.contains("<img"), "unescaped tenant id");
        assert!(!page.contains("<b>bold"), "unescaped scenario");
        assert!(!page.contains("<script"), "unescaped note");
        assert!(page.contains("&lt;img src=x"));
    }

    #[test]
    fn skipped_gates_are_shown_as_skipped_not_passed() {
        let mut run = crate::summary::tests::shard_with_a_gate_on_an_absent_tenant(
            0,
            "z-fast",
            "ttft_ms.p99",
            crate::gate::GateOp::Lt,
            800.0,
        );
        run.gates
            .retain(|g| g.name == "fast-ttft" || g.name == "z-fast");
        let summary = summarize(&run);
        let html = render_html(&summary, &[]);
        assert!(html.contains("1 of 2 passed, 1 skipped"), "{html}");
        assert!(html.contains("no gate failed</span>; 1 skipped"), "{html}");
        let row = html
            .lines()
            .find(|l| l.contains("<td class=\"l\">z-fast</td>"))
            .unwrap_or_default();
        assert!(row.contains(">SKIP<") && !row.contains("PASS"), "{row}");
    }

    #[test]
    fn page_has_every_section_and_plot() {
        let run = small_run();
        let summary = summarize(&run);
        let plots = render_plots(&run, &summary).unwrap_or_else(|e| panic!("{e}"));
        let page = render_html(&summary, &plots);
        for id in [
            "headline",
            "gates",
            "tenants",
            "outcomes",
            "cost",
            "plots",
            "definitions",
        ] {
            assert!(
                page.contains(&format!("<section id=\"{id}\"")),
                "missing {id}"
            );
        }
        assert_eq!(page.matches("<svg").count(), plots.len());
        assert!(
            page.contains("class=\"fail\""),
            "the tenant failing no-429 is not marked"
        );
    }
}
