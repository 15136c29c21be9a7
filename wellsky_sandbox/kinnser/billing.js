// The Billing Manager app (client-rendered, like the real Angular app). Served inline by billing.py.
function esc(s){return String(s==null?'':s).replace(/[&<>"]/g,function(c){return{'&':'&amp;','<':'&lt;','>':'&gt;','"':'&quot;'}[c];});}
function route(){var h=location.hash.replace(/^#/,'');var i=h.indexOf('?');var path=i<0?h:h.slice(0,i);
 var params=new URLSearchParams(i<0?'':h.slice(i+1));var key=params.get('sessionCacheKey')||sessionStorage.getItem('sessionCacheKey');
 if(key){sessionStorage.setItem('sessionCacheKey',key);}return{path:path,key:key};}
function link(path){return '#'+path+'?sessionCacheKey='+encodeURIComponent(route().key);}
var busy=0;function loader(on){busy+=on?1:-1;document.getElementById('globalAjaxLoader').style.display=busy>0?'block':'none';}
function call(params,done,fail){loader(true);params.sessionCacheKey=route().key;
 fetch('/AM/Billing/BillingService.cfc?'+new URLSearchParams(params).toString(),{credentials:'same-origin'})
 .then(function(r){return r.text().then(function(t){return{status:r.status,body:JSON.parse(t.replace(/^\/\//,''))};});})
 .then(function(res){loader(false);if(res.status===401){location.href='/login.cfm?reason=expired';return;}
   if(res.status!==200){(fail||function(){})(res.body);return;}done(res.body);})
 .catch(function(){loader(false);});}
function menu(){return '<div id="billingMenu"><div class="dropdown" id="ppDropdown"><a id="ManagedCareClaims" href="javascript:void(0)" onclick="this.parentNode.classList.toggle(\'open\')">Primary Payer</a><ul>'
 +'<li><a id="managedCare-ready" href="'+link('/AM/billing/claims-manager/managed-care/create-claims')+'">Ready</a></li>'
 +'<li><a id="managedCare-not-ready" href="'+link('/AM/billing/claims-manager/managed-care/not-ready')+'">Not Ready</a></li></ul></div>'
 +'<div class="dropdown" id="eoeDropdown"><a id="eoeMenu" href="javascript:void(0)" onclick="this.parentNode.classList.toggle(\'open\')">EOE</a><ul>'
 +'<li><a id="eoe-not-ready" href="'+link('/AM/billing/eoe/not-ready')+'">Not Ready</a></li></ul></div>'
 +'<a id="managed-care-unbilled-report-link" href="'+link('/AM/billing/unbilled-report')+'">Unbilled Report</a></div>'
 +'<div id="claimsManagerTabs"><a id="claimsCreation" href="'+link('/AM/billing/claims-manager/managed-care/create-claims')+'">Create Claims</a> '
 +'<a id="pendingClaimsApproval" href="'+link('/AM/billing/claims-manager/managed-care/approve-claims')+'">Approve Claims</a> '
 +'<a id="readyToSendClaims" href="'+link('/AM/billing/claims-manager/managed-care/ready-to-send')+'">Ready to Send</a> '
 +'<a id="claimsHistory" href="'+link('/AM/billing/claims-manager/managed-care/history')+'">History</a></div>';}
var grid={view:null,page:1,insurance:'1'};
function render(){var r=route();var app=document.getElementById('app');var m;
 if(!r.key){app.innerHTML='<div class="alert-red">Missing session cache key.</div>';return;}
 if(r.path==='/AM/billing'||r.path==='/AM/billing/'){document.title='Billing Manager | Kinnser Software';app.innerHTML='<h1>Billing Manager</h1>'+menu();return;}
 if((m=r.path.match(/^\/AM\/billing\/claims-manager\/managed-care\/([a-z-]+)$/))){return showGrid(m[1]);}
 if(r.path==='/AM/billing/eoe/not-ready'){return showGrid('eoe-not-ready');}
 if(r.path==='/AM/billing/unbilled-report'){return showUnbilled();}
 app.innerHTML='<div class="alert-red">Page not found.</div>';}
function showGrid(view){document.title='Claims Manager | Kinnser Software';grid={view:view,page:1,insurance:'1'};
 document.getElementById('app').innerHTML='<h1>Claims Manager</h1>'+menu()+'<h2 id="gridTitle"></h2>'
 +'<label>Insurance <select ng-model="insuranceKey" id="insuranceFilter" onchange="grid.insurance=this.value;grid.page=1;loadGrid()"><option value="1">All Insurances</option></select></label>'
 +' <button id="tabExport" onclick="document.getElementById(\'exportPanel\').style.display=\'block\'">Export</button>'
 +'<div id="exportPanel" style="display:none"><a id="btnSaveLinkText" download href="#">Save File</a></div>'
 +'<div id="gridArea"></div>';loadGrid();}
function loadGrid(){call({method:'getClaims',view:grid.view,page:grid.page,insuranceKey:grid.insurance},function(d){
 document.getElementById('gridTitle').textContent=d.TITLE;var sel=document.querySelector('select[ng-model="insuranceKey"]');
 if(sel.options.length===1){d.INSURANCES.slice(1).forEach(function(o){var op=document.createElement('option');op.value=o.KEY;op.textContent=o.NAME;sel.appendChild(op);});}
 document.getElementById('btnSaveLinkText').href='/AM/Billing/BillingService.cfc?'+new URLSearchParams({method:'exportClaims',view:grid.view,insuranceKey:grid.insurance,sessionCacheKey:route().key}).toString();
 var h='<table id="claimGrid" class="grid"><thead><tr><th><input type="checkbox" id="page1_rowSelection"></th><th>Claim</th>';
 GRID_COLUMNS.forEach(function(c){h+='<th>'+esc(c)+'</th>';});h+='<th></th></tr></thead><tbody>';
 d.ROWS.forEach(function(row){h+='<tr class="gridRow"><td><input type="checkbox" class="rowSelection"></td><td><a id="openWorksheet'+esc(row['Claim #'])+'" href="javascript:void(0)">'+esc(row['Claim #'])+'</a></td>';
  GRID_COLUMNS.forEach(function(c){var v=esc(row[c]);if(c==='Billing Period'){v='<a id="billingPeriod'+esc(row.Episode)+'" href="javascript:void(0)">'+v+'</a>';}h+='<td>'+v+'</td>';});
  h+='<td><label id="openClaimPrintView'+esc(row['Claim #'])+'">Print</label></td></tr>';});
 h+='</tbody></table>';if(!d.ROWS.length){h+='<div class="no-records">There are currently no records to display</div>';}
 h+='<div class="pager"><span id="gridPageInfo" data-page="'+d.PAGE+'" data-pages="'+d.PAGES+'" data-total="'+d.TOTAL+'">Page '+d.PAGE+' of '+d.PAGES+' ('+d.TOTAL+' items)</span> '
 +'<button id="nextGridPage" '+(d.PAGE>=d.PAGES?'disabled':'')+' onclick="grid.page++;loadGrid()">Next</button></div>';
 document.getElementById('gridArea').innerHTML=h;});}
var filters={};
function showUnbilled(){document.title='Unbilled Report | Kinnser Software';
 document.getElementById('app').innerHTML='<h1>Unbilled Report</h1>'+menu()+'<div id="filters"></div><button id="aggrid_btnfetch1" onclick="fetchUnbilled()">Fetch</button><div id="unbilledError"></div><div id="unbilledResult"></div>';
 call({method:'getFilters'},function(d){var h='';[['Branch','BRANCH'],['Payer_Type','PAYER_TYPE'],['Insurance','INSURANCE']].forEach(function(f){
  h+='<fieldset id="filter_'+f[0]+'"><legend>'+f[0].replace('_',' ')+'</legend><button id="filter_'+f[0]+'_btn_select_all" onclick="selectAll(\''+f[0]+'\')">Select All</button>';
  d[f[1]].forEach(function(v){h+='<label><input type="checkbox" name="'+f[0]+'" value="'+esc(v)+'">'+esc(v)+'</label>';});h+='</fieldset>';});
  document.getElementById('filters').innerHTML=h;});}
function selectAll(name){document.querySelectorAll('input[name="'+name+'"]').forEach(function(c){c.checked=true;});}
function chosen(name){return Array.prototype.map.call(document.querySelectorAll('input[name="'+name+'"]:checked'),function(c){return c.value;}).join('|');}
function fetchUnbilled(){document.getElementById('unbilledResult').innerHTML='';document.getElementById('unbilledError').innerHTML='';
 call({method:'getUnbilled',branch:chosen('Branch'),payerType:chosen('Payer_Type'),insurance:chosen('Insurance')},function(d){
 var h='<div id="reportAsOf">As of '+esc(d.ASOF)+'</div><div id="reportSummary"><h3>Report Summary</h3><table>';
 Object.keys(d.SUMMARY).forEach(function(k){h+='<tr><th>'+esc(k)+'</th><td>'+esc(d.SUMMARY[k])+'</td></tr>';});
 h+='</table></div><div id="unbilledByPayerType"><h3>Total Unbilled By Payer Type</h3><table>';
 d.BYPAYERTYPE.forEach(function(r){h+='<tr><th>'+esc(r.type)+'</th><td>'+esc(r.amount)+'</td></tr>';});
 h+='</table></div><div id="agingSummary"><h3>Aging Summary</h3><table><tr>';d.AGING.forEach(function(r){h+='<th>'+esc(r.bucket)+'</th>';});
 h+='</tr><tr>';d.AGING.forEach(function(r){h+='<td>'+esc(r.amount)+'</td>';});h+='</tr></table></div>';
 h+='<div class="ag-root" id="unbilledGrid"><div class="ag-header-row">';UNBILLED_COLUMNS.forEach(function(c){h+='<div class="ag-header-cell" col-id="'+c[0]+'">'+esc(c[1])+'</div>';});
 h+='</div><div class="ag-center-cols-container">';d.ROWS.forEach(function(row,i){h+='<div class="ag-row" row-index="'+i+'">';
  UNBILLED_COLUMNS.forEach(function(c){h+='<div class="ag-cell" col-id="'+c[0]+'">'+esc(row[c[0]])+'</div>';});h+='</div>';});
 h+='</div></div>';if(!d.ROWS.length){h+='<div class="no-records">There are currently no records to display</div>';}
 document.getElementById('unbilledResult').innerHTML=h;},function(err){document.getElementById('unbilledError').innerHTML='<div class="alert-red">'+esc(err.ERROR)+'</div>';});}
window.addEventListener('hashchange',render);render();
