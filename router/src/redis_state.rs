//! Limits and budget holds in Redis, shared by every router process that points at it.
//!
//! Each admission is one Lua script (Redis runs a script atomically), so N replicas enforce one
//! allowance with no read-then-write race: the script drops what left the window by Redis's own
//! clock (`TIME`, the same for every replica), checks every limit of every scope, and only then
//! takes them. The algorithm is the in-memory one ([`crate::limiter`]): a sliding log per scope
//! and dimension, as sorted sets scored by admission time in ms (RPM: one member per request;
//! TPM: one member per request, its tokens in a hash beside it with their running sum), TPM
//! reserving the estimate and reconciled with usage by member; budgets hold the worst case
//! ([`crate::ledger`]). A log's keys expire 61 s after their last write, when nothing in them
//! can count any more.
//!
//! A replica that dies holding a parallel-request slot or a budget hold cannot give it back, so
//! both are leases: slots are members of a sorted set scored by expiry, holds are entries of a
//! hash with an expiry set, and every script first drops what has expired ([`LEASE`]). Spend
//! per budget period lives under a key named for the period (`…:spend:<scope>:<start ms>`), so a
//! new period starts at zero by construction; at start-up each replica seeds it from the SQL
//! spend log with `SET NX`, which keeps what another replica already counted.

use std::time::Duration;

use futures_util::future::BoxFuture;
use redis::aio::MultiplexedConnection;

use crate::clock::Clock;
use crate::ledger::{BudgetExceeded, BudgetStatus, Hold, Ledger, Money, ReserveError};
use crate::limiter::{
    Allowance, Grant, LimitKind, Limiter, ParallelSlot, Refused, Rejection, Ticket, Window,
};
use crate::scope::Scope;

/// How long a slot or a hold outlives a replica that crashed while holding it.
pub const LEASE: Duration = Duration::from_secs(900);

const LIMIT_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local W = 60000
local n = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
local reserved = tonumber(ARGV[3])
local member = ARGV[4]
local lease = tonumber(ARGV[5])
local mode = ARGV[6]
local cutoff = now - W
-- Keys per scope: RPM log (zset member -> ms), TPM log (zset), TPM amounts (hash member ->
-- tokens, plus the running sum under '_sum'), parallel slots (zset member -> lease expiry).
local function rk(i) return KEYS[4 * i - 3] end
local function tk(i) return KEYS[4 * i - 2] end
local function hk(i) return KEYS[4 * i - 1] end
local function pk(i) return KEYS[4 * i] end
local function rpm_count(i, limit)
  if limit <= 0 then return nil end
  redis.call('ZREMRANGEBYSCORE', rk(i), '-inf', cutoff)
  return redis.call('ZCARD', rk(i))
end
local function tpm_sum(i, limit)
  if limit <= 0 then return nil end
  while true do
    local gone = redis.call('ZRANGEBYSCORE', tk(i), '-inf', cutoff, 'LIMIT', 0, 500)
    if #gone == 0 then break end
    local amounts = redis.call('HMGET', hk(i), unpack(gone))
    local freed = 0
    for _, a in ipairs(amounts) do freed = freed + (tonumber(a) or 0) end
    redis.call('HDEL', hk(i), unpack(gone))
    redis.call('ZREM', tk(i), unpack(gone))
    redis.call('HINCRBY', hk(i), '_sum', -freed)
    if #gone < 500 then break end
  end
  local s = tonumber(redis.call('HGET', hk(i), '_sum') or '0')
  if s < 0 then s = 0 end
  return s
end
local function oldest(key)
  local o = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  if #o == 0 then return 0 end
  return tonumber(o[2]) + W - now
end
local function touch(i)
  redis.call('PEXPIRE', tk(i), W + 1000)
  redis.call('PEXPIRE', hk(i), W + 1000)
end
local function tpm_set(i, m, amount)
  local a = tonumber(redis.call('HGET', hk(i), m) or '0')
  if amount > 0 then
    redis.call('HSET', hk(i), m, amount)
  else
    redis.call('HDEL', hk(i), m)
    redis.call('ZREM', tk(i), m)
  end
  redis.call('HINCRBY', hk(i), '_sum', amount - a)
  touch(i)
end
local state = {}
local verdict = {1, 0, 0, 0}
for i = 1, n do
  local b = 6 + (i - 1) * 3
  local rpm, tpm, par = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  local r, k = rpm_count(i, rpm), tpm_sum(i, tpm)
  state[i] = {r, k}
  if verdict[1] == 1 and mode == 'admit' then
    if par > 0 then
      redis.call('ZREMRANGEBYSCORE', pk(i), '-inf', now)
      if redis.call('ZCARD', pk(i)) >= par then verdict = {0, 3, par, 1000} end
    end
    if verdict[1] == 1 and r ~= nil and r >= rpm then
      -- Admissible again when the (r - rpm + 1)-th oldest entry has left the window.
      local e = redis.call('ZRANGE', rk(i), r - rpm, r - rpm, 'WITHSCORES')
      verdict = {0, 1, rpm, tonumber(e[2]) + W - now}
    end
    if verdict[1] == 1 and k ~= nil and k >= tpm then
      local wait = W
      local left = k
      local es = redis.call('ZRANGE', tk(i), 0, -1, 'WITHSCORES')
      for j = 1, #es, 2 do
        left = left - tonumber(redis.call('HGET', hk(i), es[j]) or '0')
        if left < tpm then wait = tonumber(es[j + 1]) + W - now; break end
      end
      verdict = {0, 2, tpm, wait}
    end
  end
end
if mode == 'admit' and verdict[1] == 1 then
  for i = 1, n do
    local b = 6 + (i - 1) * 3
    local par = tonumber(ARGV[b + 3])
    if state[i][1] ~= nil then
      redis.call('ZADD', rk(i), now, member)
      redis.call('PEXPIRE', rk(i), W + 1000)
      state[i][1] = state[i][1] + 1
    end
    if state[i][2] ~= nil then
      redis.call('ZADD', tk(i), now, member)
      tpm_set(i, member, tokens)
      state[i][2] = state[i][2] + tokens
    end
    if par > 0 then
      redis.call('ZADD', pk(i), now + lease, member)
      redis.call('PEXPIRE', pk(i), lease)
    end
  end
end
if mode == 'reconcile' or mode == 'release' then
  for i = 1, n do
    if mode == 'release' and state[i][1] ~= nil then
      state[i][1] = state[i][1] - redis.call('ZREM', rk(i), member)
    end
    if state[i][2] ~= nil then
      local actual = tokens
      if mode == 'release' then actual = 0 end
      if redis.call('ZSCORE', tk(i), member) then
        local a = tonumber(redis.call('HGET', hk(i), member) or '0')
        tpm_set(i, member, actual)
        state[i][2] = state[i][2] + actual - a
      elseif actual > reserved then
        -- The entry left the window while the request ran: charge the overage now.
        local late = member .. ':late'
        redis.call('ZADD', tk(i), now, late)
        tpm_set(i, late, actual - reserved)
        state[i][2] = state[i][2] + actual - reserved
      end
    end
  end
end
local out = verdict
for i = 1, n do
  local b = 6 + (i - 1) * 3
  local rpm, tpm = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2])
  for _, d in ipairs({{rpm, state[i][1], rk(i)}, {tpm, state[i][2], tk(i)}}) do
    if d[2] == nil then
      table.insert(out, 0); table.insert(out, 0); table.insert(out, 0)
    else
      local rem = d[1] - d[2]
      if rem < 0 then rem = 0 end
      table.insert(out, d[1]); table.insert(out, rem); table.insert(out, oldest(d[3]))
    end
  end
end
return out
"#;

const BUDGET_SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local n = tonumber(ARGV[1])
local mode = ARGV[2]
local id = ARGV[3]
local amount = tonumber(ARGV[4])
local lease = tonumber(ARGV[5])
local function prune(i)
  local hexp = KEYS[4 * i]
  local gone = redis.call('ZRANGEBYSCORE', hexp, '-inf', now)
  for _, h in ipairs(gone) do
    local a = redis.call('HGET', KEYS[4 * i - 1], h)
    if a then
      redis.call('DECRBY', KEYS[4 * i - 2], a)
      redis.call('HDEL', KEYS[4 * i - 1], h)
    end
    redis.call('ZREM', hexp, h)
  end
end
local function num(k)
  return tonumber(redis.call('GET', k) or '0')
end
for i = 1, n do prune(i) end
if mode == 'reserve' then
  for i = 1, n do
    local budget = tonumber(ARGV[5 + 2 * i - 1])
    local spent, held = num(KEYS[4 * i - 3]), num(KEYS[4 * i - 2])
    if spent >= budget or spent + held + amount > budget then
      return {0, i, spent, held, budget}
    end
  end
  for i = 1, n do
    redis.call('INCRBY', KEYS[4 * i - 2], amount)
    redis.call('HSET', KEYS[4 * i - 1], id, amount)
    redis.call('ZADD', KEYS[4 * i], now + lease, id)
    redis.call('PEXPIRE', KEYS[4 * i - 2], lease)
    redis.call('PEXPIRE', KEYS[4 * i - 1], lease)
    redis.call('PEXPIRE', KEYS[4 * i], lease)
  end
  return {1}
end
if mode == 'finish' then
  for i = 1, n do
    local a = redis.call('HGET', KEYS[4 * i - 1], id)
    if a then
      redis.call('DECRBY', KEYS[4 * i - 2], a)
      redis.call('HDEL', KEYS[4 * i - 1], id)
      redis.call('ZREM', KEYS[4 * i], id)
    end
    if amount > 0 then
      redis.call('INCRBY', KEYS[4 * i - 3], amount)
      local ttl = tonumber(ARGV[5 + 2 * i])
      if ttl > 0 then redis.call('PEXPIRE', KEYS[4 * i - 3], ttl) end
    end
  end
  return {1}
end
local out = {1}
for i = 1, n do
  table.insert(out, num(KEYS[4 * i - 3]))
  table.insert(out, num(KEYS[4 * i - 2]))
end
return out
"#;

/// A connection to the shared Redis and the key prefix of this deployment.
#[derive(Clone)]
pub struct RedisState {
    conn: MultiplexedConnection,
    prefix: String,
    clock: Clock,
    limit: redis::Script,
    budget: redis::Script,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisState({})", self.prefix)
    }
}

/// Redis failures are reported as text: the caller turns them into a 503 and a log line.
fn text(e: redis::RedisError) -> String {
    format!("redis: {e}")
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisState {
    /// Connects (one multiplexed connection carries every request's scripts).
    pub async fn connect(url: &str, prefix: &str, clock: Clock) -> Result<Self, redis::RedisError> {
        let client = redis::Client::open(url)?;
        let mut conn = client.get_multiplexed_async_connection().await?;
        let _: String = redis::cmd("PING").query_async(&mut conn).await?;
        Ok(Self {
            conn,
            prefix: prefix.to_string(),
            clock,
            limit: redis::Script::new(LIMIT_SCRIPT),
            budget: redis::Script::new(BUDGET_SCRIPT),
        })
    }

    /// One run of the limits script. `tokens` is the estimate (admit) or the usage
    /// (reconcile); `reserved` the ticket's estimate.
    fn limit_call(
        &self,
        scopes: &[Scope],
        tokens: u64,
        reserved: u64,
        member: &str,
        mode: &str,
    ) -> redis::ScriptInvocation<'_> {
        let limited: Vec<&Scope> = scopes.iter().filter(|s| s.has_limits()).collect();
        let mut inv = self.limit.prepare_invoke();
        for s in &limited {
            // Named apart from the token-bucket hashes of earlier versions (`rpm:`, `tpm:`),
            // so a Redis that still holds those never answers WRONGTYPE.
            inv.key(format!("{}:rpmlog:{}", self.prefix, s.id));
            inv.key(format!("{}:tpmlog:{}", self.prefix, s.id));
            inv.key(format!("{}:tpmamt:{}", self.prefix, s.id));
            inv.key(format!("{}:par:{}", self.prefix, s.id));
        }
        inv.arg(limited.len())
            .arg(tokens)
            .arg(reserved)
            .arg(member)
            .arg(ms(LEASE))
            .arg(mode);
        for s in &limited {
            inv.arg(s.rpm.map_or(0, |x| x.get()));
            inv.arg(s.tpm.map_or(0, |x| x.get()));
            inv.arg(s.max_parallel.map_or(0, |x| x.get()));
        }
        inv
    }

    async fn run_limits(
        &self,
        scopes: &[Scope],
        tokens: u64,
        reserved: u64,
        member: &str,
        mode: &str,
    ) -> Result<(Vec<i64>, Allowance), String> {
        let mut conn = self.conn.clone();
        let v: Vec<i64> = self
            .limit_call(scopes, tokens, reserved, member, mode)
            .invoke_async(&mut conn)
            .await
            .map_err(text)?;
        let mut allowance = Allowance::default();
        let window = |w: &[i64]| {
            (w.first().copied().unwrap_or(0) > 0).then(|| Window {
                limit: u64::try_from(w.first().copied().unwrap_or(0)).unwrap_or(0),
                remaining: u64::try_from(w.get(1).copied().unwrap_or(0)).unwrap_or(0),
                reset: Duration::from_millis(
                    u64::try_from(w.get(2).copied().unwrap_or(0)).unwrap_or(0),
                ),
            })
        };
        for chunk in v.get(4..).unwrap_or(&[]).chunks(6) {
            allowance = allowance.merge(Allowance {
                requests: window(chunk.get(0..3).unwrap_or(&[])),
                tokens: window(chunk.get(3..6).unwrap_or(&[])),
            });
        }
        Ok((v, allowance))
    }

    fn budget_keys(&self, scopes: &[Scope], now: u64) -> (Vec<String>, Vec<i64>) {
        let mut keys = Vec::new();
        let mut args = Vec::new();
        for s in scopes.iter().filter(|s| s.budget.is_some()) {
            keys.push(format!(
                "{}:spend:{}:{}",
                self.prefix,
                s.id,
                s.period_start_ms(now)
            ));
            keys.push(format!("{}:held:{}", self.prefix, s.id));
            keys.push(format!("{}:holds:{}", self.prefix, s.id));
            keys.push(format!("{}:hexp:{}", self.prefix, s.id));
            args.push(s.budget.map_or(0, Money::nanos));
            // The period's spend key outlives its period by one period, then goes.
            let ttl = s
                .budget_period
                .map_or(0, |p| s.period_left_ms(now).unwrap_or(0) + ms(p));
            args.push(i64::try_from(ttl).unwrap_or(i64::MAX));
        }
        (keys, args)
    }

    async fn run_budget(
        &self,
        scopes: &[Scope],
        mode: &str,
        id: u64,
        amount: Money,
    ) -> Result<Vec<i64>, String> {
        let now = self.clock.now_ms();
        let (keys, args) = self.budget_keys(scopes, now);
        let mut inv = self.budget.prepare_invoke();
        for k in &keys {
            inv.key(k);
        }
        inv.arg(keys.len() / 4)
            .arg(mode)
            .arg(id.to_string())
            .arg(amount.nanos())
            .arg(ms(LEASE));
        for a in &args {
            inv.arg(*a);
        }
        let mut conn = self.conn.clone();
        inv.invoke_async(&mut conn).await.map_err(text)
    }
}

impl Limiter for RedisState {
    fn admit<'a>(
        &'a self,
        scopes: &'a [Scope],
        tokens: u64,
    ) -> BoxFuture<'a, Result<Grant, Refused>> {
        Box::pin(async move {
            let id = rand::random::<u64>();
            let member = format!("{id:016x}");
            let (v, allowance) = self
                .run_limits(scopes, tokens, 0, &member, "admit")
                .await
                .map_err(Refused::Backend)?;
            if v.first().copied() != Some(1) {
                let kind = match v.get(1).copied() {
                    Some(1) => LimitKind::Requests,
                    Some(2) => LimitKind::Tokens,
                    _ => LimitKind::ParallelRequests,
                };
                return Err(Refused::Limit(Rejection {
                    kind,
                    limit: u64::try_from(v.get(2).copied().unwrap_or(0)).unwrap_or(0),
                    retry_after: Duration::from_millis(
                        u64::try_from(v.get(3).copied().unwrap_or(1000)).unwrap_or(1000),
                    ),
                    allowance,
                }));
            }
            let par: Vec<String> = scopes
                .iter()
                .filter(|s| s.max_parallel.is_some())
                .map(|s| format!("{}:par:{}", self.prefix, s.id))
                .collect();
            let slot = (!par.is_empty()).then(|| {
                let mut conn = self.conn.clone();
                ParallelSlot::new(move || {
                    // Drop cannot wait: the release runs on its own task; if it never runs
                    // (runtime gone), the lease expires the slot.
                    if let Ok(rt) = tokio::runtime::Handle::try_current() {
                        rt.spawn(async move {
                            let mut p = redis::pipe();
                            for k in &par {
                                p.cmd("ZREM").arg(k).arg(&member).ignore();
                            }
                            if let Err(e) = p.query_async::<()>(&mut conn).await {
                                tracing::warn!(error = %e, "parallel slot not released in redis; it expires with its lease");
                            }
                        });
                    }
                })
            });
            Ok(Grant {
                ticket: Ticket {
                    id,
                    at_ms: 0,
                    tokens,
                },
                allowance,
                slot,
            })
        })
    }

    fn reconcile<'a>(
        &'a self,
        scopes: &'a [Scope],
        ticket: Ticket,
        actual: u64,
    ) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !scopes.iter().any(|s| s.tpm.is_some()) {
                return;
            }
            let member = format!("{:016x}", ticket.id);
            if let Err(e) = self
                .run_limits(scopes, actual, ticket.tokens, &member, "reconcile")
                .await
            {
                tracing::warn!(error = %e, "TPM usage not reconciled in redis");
            }
        })
    }

    fn release<'a>(&'a self, scopes: &'a [Scope], ticket: Ticket) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !scopes.iter().any(|s| s.rpm.is_some() || s.tpm.is_some()) {
                return;
            }
            let member = format!("{:016x}", ticket.id);
            if let Err(e) = self
                .run_limits(scopes, 0, ticket.tokens, &member, "release")
                .await
            {
                tracing::warn!(error = %e, "rate-limit entries not released in redis; they leave the window in 60 s");
            }
        })
    }

    fn allowance<'a>(&'a self, scopes: &'a [Scope]) -> BoxFuture<'a, Allowance> {
        Box::pin(async move {
            self.run_limits(scopes, 0, 0, "", "peek")
                .await
                .map(|(_, a)| a)
                .unwrap_or_default()
        })
    }
}

impl Ledger for RedisState {
    fn reserve<'a>(
        &'a self,
        scopes: &'a [Scope],
        worst: Money,
    ) -> BoxFuture<'a, Result<Hold, ReserveError>> {
        Box::pin(async move {
            let id = rand::random::<u64>();
            if !scopes.iter().any(|s| s.budget.is_some()) {
                return Ok(Hold::new(worst, id));
            }
            let v = self
                .run_budget(scopes, "reserve", id, worst)
                .await
                .map_err(ReserveError::Backend)?;
            if v.first().copied() == Some(1) {
                return Ok(Hold::new(worst, id));
            }
            let budgeted: Vec<&Scope> = scopes.iter().filter(|s| s.budget.is_some()).collect();
            let i = usize::try_from(v.get(1).copied().unwrap_or(1))
                .unwrap_or(1)
                .max(1)
                - 1;
            let s = budgeted.get(i).copied().unwrap_or(budgeted[0]);
            Err(ReserveError::Exceeded(BudgetExceeded {
                scope: s.id.clone(),
                spent: Money::from_nanos(v.get(2).copied().unwrap_or(0)),
                reserved: Money::from_nanos(v.get(3).copied().unwrap_or(0)),
                budget: Money::from_nanos(v.get(4).copied().unwrap_or(0)),
                requested: worst,
                resets_in: s
                    .period_left_ms(self.clock.now_ms())
                    .map(Duration::from_millis),
            }))
        })
    }

    fn settle<'a>(&'a self, scopes: &'a [Scope], hold: Hold, actual: Money) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if !scopes.iter().any(|s| s.budget.is_some()) {
                return;
            }
            if let Err(e) = self.run_budget(scopes, "finish", hold.id(), actual).await {
                tracing::error!(error = %e, "spend not added in redis (the SQL spend log has it)");
            }
        })
    }

    fn release<'a>(&'a self, scopes: &'a [Scope], hold: Hold) -> BoxFuture<'a, ()> {
        self.settle(scopes, hold, Money::ZERO)
    }

    fn status<'a>(&'a self, scope: &'a Scope) -> BoxFuture<'a, BudgetStatus> {
        Box::pin(async move {
            let one = std::slice::from_ref(scope);
            let v = if scope.budget.is_some() {
                self.run_budget(one, "status", 0, Money::ZERO)
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
            BudgetStatus {
                spent: Money::from_nanos(v.get(1).copied().unwrap_or(0)),
                reserved: Money::from_nanos(v.get(2).copied().unwrap_or(0)),
                budget: scope.budget,
            }
        })
    }

    fn resume<'a>(&'a self, scope: &'a Scope, spent: Money) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if scope.budget.is_none() {
                return;
            }
            let now = self.clock.now_ms();
            let (keys, args) = self.budget_keys(std::slice::from_ref(scope), now);
            let Some(key) = keys.first() else { return };
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(spent.nanos()).arg("NX");
            if let Some(ttl) = args.get(1).copied().filter(|t| *t > 0) {
                cmd.arg("PX").arg(ttl);
            }
            let mut conn = self.conn.clone();
            if let Err(e) = cmd.query_async::<()>(&mut conn).await {
                tracing::warn!(error = %e, scope = %scope.id, "budget not seeded in redis");
            }
        })
    }
}
