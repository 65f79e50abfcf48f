<#
.SYNOPSIS
Runs the han Windows GPU worker in this console: the runbook's manual path (step 4).

.DESCRIPTION
Starts the same worker, with the same configuration, as the scheduled task that the Ansible role
windows_worker registers (playbooks/windows_worker.yml installs both): the worker's venv runs
han_worker_supervisor.py with the installation's supervisor.json, which runs "han-worker run --config
worker.json", restarts it if it dies and writes its output to logs\worker.log (rotated). The output is
also shown here. Ctrl-C drains the worker: the job in flight finishes or goes back to its queue.

-MacIp sets MAC_LAN_IP for the worker, which then uses the Mac's control plane at that address instead
of the one in worker.json; ports and credentials stay those of the installation.

Only one worker runs per installation: while the scheduled task runs it, this script stops with exit
code 3. Stop the task first (ansible-playbook playbooks/windows_worker.yml -e state=stopped, or
Stop-ScheduledTask -TaskPath '\han\' -TaskName 'han-worker').

Run it from an elevated PowerShell or as the worker's account: the credentials file is readable by
those only.

.PARAMETER MacIp
The Mac's LAN address (an IP address). Optional: without it, the address in worker.json.

.PARAMETER InstallDir
Where the role installed the worker. Default: $env:HAN_WORKER_HOME, else C:\ProgramData\han-worker.

.EXAMPLE
powershell -ExecutionPolicy Bypass -File scripts\windows\run_gpu_worker.ps1 -MacIp 192.168.1.20
#>
[CmdletBinding()]
param (
    [String] $MacIp = '',
    [String] $InstallDir = $(if ($env:HAN_WORKER_HOME) { $env:HAN_WORKER_HOME } else { 'C:\ProgramData\han-worker' })
)

Set-StrictMode -Version 3.0
$ErrorActionPreference = 'Stop'

$python = Join-Path -Path $InstallDir -ChildPath 'venv\Scripts\python.exe'
$supervisor = Join-Path -Path $InstallDir -ChildPath 'bin\han_worker_supervisor.py'
$settings = Join-Path -Path $InstallDir -ChildPath 'config\supervisor.json'

foreach ($required in @($python, $supervisor, $settings)) {
    if (-not (Test-Path -LiteralPath $required -PathType Leaf)) {
        $problem = "$required does not exist: install the worker with playbooks/windows_worker.yml, or pass -InstallDir"
        Write-Error -Message $problem -ErrorAction Continue
        exit 2
    }
}

if ($MacIp) {
    $address = $null
    if (-not [System.Net.IPAddress]::TryParse($MacIp, [ref] $address)) {
        Write-Error -Message "-MacIp: '$MacIp' is not an IP address" -ErrorAction Continue
        exit 2
    }
    $env:MAC_LAN_IP = $address.ToString()
}

& $python $supervisor --settings $settings --console
$code = $LASTEXITCODE
if ($code -eq 3) {
    Write-Warning -Message 'The scheduled task runs this worker already: stop it first (playbooks/windows_worker.yml -e state=stopped).'
}
exit $code
