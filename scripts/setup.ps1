# scripts/setup for Windows PowerShell: create .venv (once) and install sdtui into it; later runs
# skip the install unless pyproject.toml or the version changed. Torch: if the venv has none,
# install $env:SDTUI_TORCH as given, else torch + torchvision built for this machine's NVIDIA
# driver (PyPI's torch is CPU-only on Windows). Pass "test" to add the test tools.
#   .\scripts\setup.ps1            then  .venv\Scripts\sdtui
#   $env:SDTUI_TORCH_INDEX = "https://download.pytorch.org/whl/cu126"   (or "pypi") picks the index
param([string]$Extras = "")
# errors are checked by hand ($LASTEXITCODE): with "Stop", Windows PowerShell 5.1 turns pip's
# warnings on stderr into terminating errors
$ErrorActionPreference = "Continue"
Set-Location (Join-Path $PSScriptRoot "..")

$Py = if ($env:PYTHON) { $env:PYTHON } else { "py" }
$PyArgs = if ($env:PYTHON) { @() } else { @("-3") }  # the Python launcher: the newest Python 3
$Venv = ".venv\Scripts\python.exe"
$Log = ".venv\setup.log"

function Quiet {  # pip's chatter goes to the log; shown only when something fails
    param([string[]]$Cmd)
    & $Cmd[0] $Cmd[1..($Cmd.Length - 1)] *>> $Log
    if ($LASTEXITCODE -ne 0) {
        Get-Content $Log | Write-Host
        Write-Host "setup failed: see above (also in $Log)"
        exit 1
    }
}

function Test-TooOld([string]$Exe, [string[]]$ExeArgs) {  # pyproject.toml: requires-python
    & $Exe @ExeArgs -c "import sys; sys.exit(sys.version_info < (3, 11))" 2>$null
    return $LASTEXITCODE -ne 0
}

# The newest CUDA version the NVIDIA driver runs, as "12.8" (nvidia-smi's header), or "".
function Get-DriverCuda {
    $smi = Get-Command nvidia-smi -ErrorAction SilentlyContinue
    if (-not $smi) { return "" }
    $out = & $smi.Source 2>$null | Out-String
    if ($out -match "CUDA Version:\s*(\d+\.\d+)") { return $Matches[1] }
    return ""
}

# What scripts/torch-index does: the pip options for PyTorch's index of this driver's CUDA.
function Get-TorchIndex {
    $base = "https://download.pytorch.org/whl"
    $builds = @(@("13.0", "cu130"), @("12.8", "cu128"), @("12.6", "cu126"))  # newest first
    if ($env:SDTUI_TORCH_INDEX) {
        if ($env:SDTUI_TORCH_INDEX -eq "pypi") {
            Write-Host "sdtui: PyTorch from PyPI (SDTUI_TORCH_INDEX=pypi)"
            return @()
        }
        Write-Host "sdtui: PyTorch from $($env:SDTUI_TORCH_INDEX) (SDTUI_TORCH_INDEX)"
        return @("--index-url", $env:SDTUI_TORCH_INDEX)
    }
    $cuda = Get-DriverCuda
    if (-not $cuda) {
        Write-Host "sdtui: no NVIDIA driver found: PyTorch from PyPI, the CPU build (set SDTUI_TORCH_INDEX to choose)"
        return @()
    }
    $have = [version]$cuda
    foreach ($b in $builds) {
        if ($have -ge [version]$b[0]) {
            Write-Host "sdtui: the NVIDIA driver runs CUDA ${cuda}: PyTorch's $($b[1]) build"
            return @("--index-url", "$base/$($b[1])")
        }
    }
    $oldest = $builds[-1]
    if ($have.Major -eq ([version]$oldest[0]).Major) {  # CUDA's minor version compatibility
        Write-Host "sdtui: the NVIDIA driver runs CUDA $cuda, older than $($oldest[0]): PyTorch's $($oldest[1]) build (a newer driver is better)"
        return @("--index-url", "$base/$($oldest[1])")
    }
    Write-Host "sdtui: the NVIDIA driver runs CUDA $cuda, too old for PyTorch's CUDA builds ($($oldest[0]) or newer): the CPU build; update the driver, remove .venv and run this again to use the GPU"
    return @("--index-url", "$base/cpu")
}

if (-not (Test-Path $Venv)) {
    if (-not (Get-Command $Py -ErrorAction SilentlyContinue)) {
        Write-Host "sdtui needs Python 3.11 or newer: $Py was not found (install it from python.org, or set `$env:PYTHON)"
        exit 1
    }
    if (Test-TooOld $Py $PyArgs) {
        Write-Host "sdtui needs Python 3.11 or newer; $Py is older: set `$env:PYTHON to a newer python.exe"
        exit 1
    }
    Write-Host "sdtui: creating .venv (first run only)"
    & $Py @PyArgs -m venv .venv
    if ($LASTEXITCODE -ne 0) { exit 1 }
    Quiet @($Venv, "-m", "pip", "install", "--upgrade", "pip")
} elseif (Test-TooOld $Venv @()) {
    Write-Host "sdtui needs Python 3.11 or newer; .venv has an older one: remove .venv and run this again"
    exit 1
}
Set-Content -Path $Log -Value ""

# find_spec, not import: importing torch takes seconds on every start
& $Venv -c "import importlib.util as u, sys; sys.exit(not (u.find_spec('torch') and u.find_spec('torchvision')))"
if ($LASTEXITCODE -ne 0) {
    if ($env:SDTUI_TORCH) {
        Write-Host "sdtui: installing PyTorch into .venv ($($env:SDTUI_TORCH))"
        Quiet (@($Venv, "-m", "pip", "install") + ($env:SDTUI_TORCH -split "\s+" | Where-Object { $_ }))
    } else {
        $index = @(Get-TorchIndex)
        Write-Host "sdtui: installing PyTorch into .venv (torch torchvision $($index -join ' '))"
        Quiet (@($Venv, "-m", "pip", "install", "torch", "torchvision") + $index)
    }
}

$extras = if ($Extras -eq "test") { "[test]" } else { "" }
$stamp = if ($extras) { ".venv\.sdtui-installed-test" } else { ".venv\.sdtui-installed" }
$hashed = @("pyproject.toml", "sdtui\__init__.py")
if ($env:SDTUI_CONSTRAINTS) { $hashed += $env:SDTUI_CONSTRAINTS }
$want = (($hashed | ForEach-Object { (Get-FileHash -Algorithm SHA256 $_).Hash }) -join "").Substring(0, 16)
$have = if (Test-Path $stamp) { (Get-Content $stamp -Raw).Trim() } else { "" }
$haveTest = if (Test-Path ".venv\.sdtui-installed-test") { (Get-Content ".venv\.sdtui-installed-test" -Raw).Trim() } else { "" }
# an install with the test tools also serves a plain run
if ($have -ne $want -and $haveTest -ne $want) {
    Write-Host "sdtui: installing sdtui$extras into .venv"
    $constraints = if ($env:SDTUI_CONSTRAINTS) { @("-c", $env:SDTUI_CONSTRAINTS) } else { @() }
    Quiet (@($Venv, "-m", "pip", "install") + $constraints + @("-e", ".$extras"))
    Set-Content -Path $stamp -Value $want
}
