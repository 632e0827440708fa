// Package qqsim simulates the QQ Bot OpenAPI for tests, benchmarks and demos.
//
// It serves the token endpoint, the four send endpoints and the two upload
// endpoints over real HTTP (Sim.Handler), enforces the platform's rules, can
// misbehave on purpose, and records what it accepted so a test can check the
// dispatcher. Because it is the referee, its bookkeeping is deliberately
// naive and independent: it imports no other qqdispatch package, keeps every
// accepted timestamp of every rate window in a plain list, and counts quotas
// in a map keyed by calendar period. One mutex covers all of it, and a
// send is checked and recorded under that mutex in one step, so concurrent
// senders can never slip past a limit.
//
// # Many bots
//
// A Sim serves any number of bots (apps): Config.AppID is the default bot,
// Config.Bots are more, and AddBot adds one while the Sim runs. The token
// endpoint issues each app its own tokens; a token is bound to its app, so
// a call whose X-Union-Appid names another app is refused (11241). Every
// rule below counts per bot, as the platform does: rate windows, quotas
// (PerBot means that bot, PerTarget that bot and target, PerEndpoint that
// bot's endpoint), inbound messages (a reply anchors only to a message sent
// to its own bot), reply budgets, msg_seq dedupe and issued file_infos, so
// two bots never share a count. A bot is held to the Sim's rules unless it
// has its own (Bot.Rules: an uncertified bot's lower rates, say); faults,
// scripts and channel registrations are shared (Script.Bot narrows a
// script to one bot). Accepted messages and rejections carry the bot's app id; BotReport
// (Bots, Bot) has each bot's counters, and the control surface takes
// ?bot=APPID.
//
// # The rules model
//
// Every number lives in Rules (DefaultRules holds the newest numbers of
// qq-platform.md). A send is checked in this order; the first rule that
// refuses it answers, and a refused send changes no counter:
//
//  1. auth: Authorization "QQBot <token>" with a live token, and
//     X-Union-Appid naming the app the token was issued to. Failures answer
//     HTTP 401 with 11245 (legacy "Bot" scheme), 11241 (app id header
//     missing, unknown, or not the token's app) or 11244 (token).
//  2. malformed: the body must be a JSON object shaped like the platform
//     expects (msg_type and its companion field for c2c/group, integer
//     msg_seq; one of content/embed/ark/image/markdown and no
//     msg_type/msg_seq for channel/dm; file_type 1–4 and an http or https
//     url with a host for uploads).
//  3. file_info: a msg_type 7 message's media.file_info must be one an
//     upload of the same scene issued, within Config.FileTTL (1h) of that
//     upload on the Sim's clock (answered with the malformed code).
//  4. bad_anchor, passive_window: a send with msg_id (or else event_id) is
//     passive. The id must come from Inbound (InboundFor) to the same bot,
//     for the same scene and target, and the send must arrive no later than
//     the scene's PassiveWindow after the inbound time (the edge itself is
//     accepted).
//  5. dedupe: for c2c and group, a (msg_id, msg_seq) pair already accepted
//     (missing msg_seq means 1) answers 40054005. A correct sender sees this
//     only when retrying a send that was delivered, so it is counted under
//     its own name and left out of Violations.
//  6. reply_budget: a msg_id gets at most ReplyBudget replies (distinct
//     msg_seq values; 0 means unlimited).
//  7. active_not_allowed: an active send in a scene with ActiveAllowed false.
//  8. quotas, in list order: calendar-period counters in Rules.Location
//     (UTC+8 by default), keyed per target, per bot, or — for the channel
//     scene — by the distinct channels one guild used (RegisterChannel maps
//     channels to guilds; an unregistered channel is a guild of its own).
//  9. rates, in list order: a send is refused when Limit matching sends with
//     the same key were accepted in the half-open window (now-Window, now].
//     Keys are per target, per bot, or per endpoint; RateRule.Endpoint picks
//     message sends, the messages endpoint, or the files endpoint.
//
// Only accepted sends count anywhere. An upload with srv_send_msg true is an
// active message of its scene and counts like one; a plain upload counts
// only for rules on the files endpoint, and in Stats.Uploads. Every
// accepted upload answers a new file_info with ttl (FileTTL in seconds).
//
// # Around the rules
//
// Faults act before everything (nothing is recorded): a seeded share of
// calls answers HTTP 500, and Latency+Jitter delays every call, giving up
// silently when the client does. The delay models the network path: rules
// count a call at its receipt plus the delay drawn for it (Message.At), not
// when the wait ends, which on a busy host may be later. Scripts are consulted after auth: they can
// answer anything, hang, accept and then drop the connection (the client
// sees an error, the message is recorded: the "in doubt" case), or accept as
// pending audit.
//
// Tokens behave like the platform's: asking again returns the same token
// with its remaining lifetime, except in its last TokenGrace (60s), when a
// new token is issued and the old one stays valid until it expires.
//
// The HTTP control surface under /_sim/ (messages, rejections, stats,
// inbound, channels, script, faults, rules, reset, bots) mirrors the Go API
// so a simulator running as a separate process can be driven and checked:
//
//	GET  /_sim/messages[?scene=&target=&bot=]  accepted messages
//	GET  /_sim/rejections[?bot=]               RejectionsReport
//	GET  /_sim/stats[?bot=]                    Stats
//	GET  /_sim/bots                            []BotReport, default bot first
//	GET  /_sim/bots/{app_id}                   BotReport
//	POST /_sim/bots {"app_id","app_secret"[,"rules"]}  AddBotConfig (409 if served)
//	POST /_sim/inbound {"scene","target"[,"at"][,"bot"]}  {"msg_id"}
//	POST /_sim/channels, POST /_sim/script, GET|PUT /_sim/faults,
//	GET /_sim/rules[?bot=], POST /_sim/reset
//
// A ?bot= or "bot" naming no bot the Sim serves answers 404 (400 for
// inbound), so a mistyped filter never reads as a clean report. Without a
// bot, reports cover every bot and inbound goes to the default bot.
package qqsim
