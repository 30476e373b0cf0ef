-- /etc/lsyncd/lsyncd.conf.lua — mirror the web root into the S3 origin of a CloudFront
-- distribution with the aws CLI, as in the original lsyncd + Lambda setup. purgewatch runs
-- beside it and purges CloudFront once a `.purge` written here has reached the bucket.
--
-- Edit SOURCE and TARGET for your server. The environment variables exist so the same file
-- drives purgewatch's end-to-end test against a local emulator; on a server leave them unset.
-- Credentials: the instance profile (nothing to configure here).

local SOURCE   = os.getenv("LSYNCD_SOURCE") or "/var/www/html/"
local TARGET   = os.getenv("LSYNCD_TARGET") or "s3://my-origin/"
local AWS      = os.getenv("LSYNCD_AWS") or "/usr/bin/aws"
local ENDPOINT = os.getenv("LSYNCD_S3_ENDPOINT") -- an emulator only, e.g. http://127.0.0.1:5000
-- Seconds lsyncd gathers changes before a sync (1 unless set; the upload bench sets 1, 15, 40).
local DELAY    = tonumber(os.getenv("LSYNCD_DELAY") or "1") or 1

settings {
  logfile    = os.getenv("LSYNCD_LOG") or "/var/log/lsyncd/lsyncd.log",
  statusFile = os.getenv("LSYNCD_STATUS") or "/var/log/lsyncd/lsyncd.status",
  insist     = true,
}

local unpack = table.unpack or unpack

-- `aws s3 sync --delete SOURCE TARGET`: uploads what changed (by size and mtime), deletes what
-- is gone. One sync at a time, batched over `delay` seconds.
local function s3sync_args(config)
  local args = { "s3", "sync", "--delete", "--no-progress", "--only-show-errors", config.source, config.target }
  if ENDPOINT then
    table.insert(args, 1, ENDPOINT)
    table.insert(args, 1, "--endpoint-url")
  end
  return args
end

local s3sync = {
  delay = DELAY,
  maxProcesses = 1,
  -- Any change: sync the whole tree (aws s3 sync only transfers what differs).
  action = function(inlet)
    local events = inlet.getEvents()
    spawn(events, AWS, unpack(s3sync_args(inlet.getConfig())))
  end,
  -- At start: one full sync.
  init = function(event)
    spawn(event, AWS, unpack(s3sync_args(event.config)))
  end,
}

sync {
  s3sync,
  source = SOURCE,
  target = TARGET,
}
